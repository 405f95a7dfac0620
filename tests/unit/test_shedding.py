"""Past the in-flight bound, submits are refused at once; everything else is always served."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from services.api.shedding import LoadShedder


class App:
    """Answers once ``gate`` opens."""

    def __init__(self) -> None:
        self.calls = 0
        self.gate = asyncio.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.calls += 1
        await self.gate.wait()


async def call(
    shedder: LoadShedder, method: str, path: str, token: bytes = b"Bearer a"
) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    headers = [(b"host", b"api"), (b"authorization", token)]
    await shedder({"type": "http", "method": method, "path": path, "headers": headers}, None, send)
    return sent


async def test_past_the_bound_submits_are_refused_at_once_and_the_rest_served() -> None:
    app = App()
    shedder = LoadShedder(app, max_in_flight=2)
    held = [
        asyncio.ensure_future(call(shedder, "POST", p, token))
        for p, token in (("/v1/jobs", b"Bearer a"), ("/v1/jobs/batch", b"Bearer b"))
    ]
    await asyncio.sleep(0)
    assert shedder.in_flight == 2
    for path in ("/v1/jobs", "/v1/jobs/batch"):
        start, body = await call(shedder, "POST", path)
        assert start["status"] == 503
        assert (b"retry-after", b"1") in start["headers"]
        assert json.loads(body["body"])["status"] == 503
    others = [
        asyncio.ensure_future(call(shedder, method, path))
        for method, path in (("GET", "/v1/jobs"), ("POST", "/v1/admin/queues"))
    ]
    await asyncio.sleep(0)
    assert app.calls == 4
    app.gate.set()
    await asyncio.gather(*held, *others)
    assert shedder.in_flight == 0
    await call(shedder, "POST", "/v1/jobs")
    assert app.calls == 5


async def test_a_submit_that_fails_still_frees_its_place() -> None:
    async def broken(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("boom")

    shedder = LoadShedder(broken, max_in_flight=1)
    for _ in range(3):
        with contextlib.suppress(RuntimeError):
            await call(shedder, "POST", "/v1/jobs")
    assert shedder.in_flight == 0


async def test_one_credential_holds_at_most_half_of_the_places() -> None:
    app = App()
    shedder = LoadShedder(app, max_in_flight=4)
    slow = [
        asyncio.ensure_future(call(shedder, "POST", "/v1/jobs", b"Bearer slow")) for _ in range(2)
    ]
    await asyncio.sleep(0)
    [start, _] = await call(shedder, "POST", "/v1/jobs", b"Bearer slow")
    assert start["status"] == 503
    other = asyncio.ensure_future(call(shedder, "POST", "/v1/jobs", b"Bearer other"))
    await asyncio.sleep(0)
    assert app.calls == 3
    app.gate.set()
    await asyncio.gather(*slow, other)
    assert shedder.in_flight == 0
    assert shedder._by_credential == {}
