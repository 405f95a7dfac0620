"""How long submits take to be answered (``jobq_submit_seconds``): from the request reaching
the app to the last byte of the answer, the token check, validation and INSERT included."""

from __future__ import annotations

import time

from litestar.types import ASGIApp, Receive, Scope, Send

from services.api.shedding import SUBMIT_PATHS
from shared.metrics import Metrics

ROUTES = {"/v1/jobs": "single", "/v1/jobs/batch": "batch"}
assert set(ROUTES) == SUBMIT_PATHS


class SubmitTimer:
    """An ASGI wrapper observing each submit request's latency."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = ROUTES.get(scope["path"])
        if route is None or scope.get("method") != "POST":  # a websocket has no method
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        try:
            await self.app(scope, receive, send)
        finally:
            self.metrics.submitted_in(route, time.perf_counter() - started)
