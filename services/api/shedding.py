"""Refusing submits early while the API process has more than it can answer in time
(docs/design.md §7).

A process answers at most so many submits a second; those it holds at once wait, each for its
share of the one core, so their latency is how many it holds divided by that rate (Little's
law). Past ``JOBQ_SUBMIT_MAX_IN_FLIGHT`` submits being answered, another is refused at once
with ``503`` and ``Retry-After: 1``, before the token, the body or the database are touched:
a refusal costs a fraction of an acceptance, so the process keeps answering the submits it
holds in time instead of answering everyone late. One credential (``Authorization`` header)
holds at most half of the places, so a client that sends its bodies slowly cannot take them
all from the other tenants.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Send = Callable[[Any], Awaitable[None]]
ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]

#: What is refused: the submit endpoints (reads, health and admin are always served).
SUBMIT_PATHS = frozenset({"/v1/jobs", "/v1/jobs/batch"})

_BODY = json.dumps(
    {
        "type": "about:blank",
        "title": "Service Unavailable",
        "status": 503,
        "detail": "this API process holds as many submits as it can answer in time; try again",
    }
).encode()


class LoadShedder:
    """An ASGI wrapper: ``app``, unless the request is a submit and ``max_in_flight`` submits
    are being answered already, or its credential's share of them."""

    def __init__(self, app: ASGIApp, max_in_flight: int) -> None:
        self.app = app
        self.max_in_flight = max_in_flight
        self.per_credential = max(1, max_in_flight // 2)
        self.in_flight = 0
        self._by_credential: dict[bytes, int] = {}

    async def __call__(self, scope: Scope, receive: Any, send: Send) -> None:
        if not (
            scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in SUBMIT_PATHS
        ):
            await self.app(scope, receive, send)
            return
        credential = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
        held = self._by_credential.get(credential, 0)
        if self.in_flight >= self.max_in_flight or held >= self.per_credential:
            await refuse(send)
            return
        self.in_flight += 1
        self._by_credential[credential] = held + 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
            left = self._by_credential[credential] - 1
            if left:
                self._by_credential[credential] = left
            else:
                del self._by_credential[credential]


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
