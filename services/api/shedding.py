"""Refusing submits early while the API process is behind (docs/design.md §7).

Past what a process can take, requests wait in socket buffers before the event loop even
reads them; the submit backlog (``JOBQ_SUBMIT_BACKLOG``) only sees those that got as far as
the INSERT. The loop's lag, how late a short timer fires, is the one signal of that wait the
process has. While the lag (smoothed) is above ``JOBQ_SUBMIT_MAX_LAG_MS``, submits are
answered ``503`` with ``Retry-After: 1`` before the token, the body or the database are
touched: a refusal costs a fraction of an acceptance, so the process drains its backlog
instead of answering everyone late.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Any]]
Send = Callable[[Any], Awaitable[None]]
ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]

#: What is refused: the submit endpoints (reads, health and admin are always served).
SUBMIT_PATHS = frozenset({"/v1/jobs", "/v1/jobs/batch"})
TICK_SECONDS = 0.025
#: Weight of the newest sample in the smoothed lag (about the last 10 ticks count).
SMOOTHING = 0.2

_BODY = json.dumps(
    {
        "type": "about:blank",
        "title": "Service Unavailable",
        "status": 503,
        "detail": "this API process is behind; try again shortly",
    }
).encode()


class LoadShedder:
    """An ASGI wrapper: ``app`` unless the loop lags and the request is a submit."""

    def __init__(self, app: ASGIApp, max_lag_seconds: float) -> None:
        self.app = app
        self.max_lag_seconds = max_lag_seconds
        #: Smoothed lag of the loop, in seconds.
        self.lag = 0.0
        self._monitor: asyncio.Task[None] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._monitor is None:
            self._monitor = asyncio.create_task(self._watch())
        if (
            scope["type"] == "http"
            and self.lag > self.max_lag_seconds
            and scope["method"] == "POST"
            and scope["path"] in SUBMIT_PATHS
        ):
            await refuse(send)
            return
        await self.app(scope, receive, send)

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(TICK_SECONDS)
            late = max(0.0, loop.time() - start - TICK_SECONDS)
            self.lag += SMOOTHING * (late - self.lag)


async def refuse(send: Send) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 503,
            "headers": [
                (b"content-type", b"application/problem+json"),
                (b"content-length", str(len(_BODY)).encode()),
                (b"retry-after", b"1"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": _BODY})
