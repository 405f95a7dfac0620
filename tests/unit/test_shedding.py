"""Submits are refused at once while the loop lags; everything else is always served."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from services.api.shedding import LoadShedder


class App:
    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.calls += 1


async def call(shedder: LoadShedder, method: str, path: str) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    await shedder({"type": "http", "method": method, "path": path}, receive, send)
    return sent


async def test_while_the_loop_lags_submits_are_refused_and_the_rest_served() -> None:
    app = App()
    shedder = LoadShedder(app, max_lag_seconds=0.1)
    assert await call(shedder, "POST", "/v1/jobs") == []
    assert app.calls == 1
    shedder.lag = 0.5
    for path in ("/v1/jobs", "/v1/jobs/batch"):
        start, body = await call(shedder, "POST", path)
        assert start["status"] == 503
        assert (b"retry-after", b"1") in start["headers"]
        assert json.loads(body["body"])["status"] == 503
    assert app.calls == 1
    await call(shedder, "GET", "/v1/jobs")
    await call(shedder, "POST", "/v1/admin/queues")
    await call(shedder, "POST", "/v1/auth/token")
    assert app.calls == 4


async def test_the_lag_is_how_late_the_loop_runs() -> None:
    shedder = LoadShedder(App(), max_lag_seconds=0.1)
    await call(shedder, "GET", "/health")  # starts watching
    await asyncio.sleep(0.1)
    assert shedder.lag < 0.02
    for _ in range(8):
        busy = time.monotonic() + 0.3
        while time.monotonic() < busy:  # the loop is blocked: the next tick fires late
            pass
        await asyncio.sleep(0.03)
    assert shedder.lag > 0.1
    for _ in range(30):
        await asyncio.sleep(0.03)
    assert shedder.lag < 0.1
