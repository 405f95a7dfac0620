"""Job types: workers register what they serve; with ``JOBQ_STRICT_TYPES`` the API refuses a
type nobody serves or a payload its schema does not fit, and fills in the type's defaults."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from dataclasses import replace
from typing import Any

import sqlalchemy as sa
from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import AsyncEngine

from services.api.app import create_app
from services.worker.main import keep_registered
from shared.config import Settings
from shared.db.types import TypeStore
from tests.conftest import Bearer
from tests.integration.conftest import REGISTRY, wait_for

THUMB = {
    "type": "object",
    "properties": {"image": {"type": "string"}, "width": {"type": "integer"}},
    "required": ["image"],
}


async def test_a_worker_registers_the_types_it_serves(
    api: AsyncTestClient[Litestar], bearer: Bearer, engine: AsyncEngine
) -> None:
    h = await bearer()
    await TypeStore(engine).register([])  # nothing to register is fine
    task = asyncio.create_task(keep_registered(TypeStore(engine), REGISTRY))
    try:

        async def listed() -> dict[str, Any] | None:
            items = (await api.get("/v1/types", headers=h)).json()["items"]
            return {t["name"]: t for t in items} or None

        types = await wait_for(listed)
    finally:
        task.cancel()
    assert {"echo", "noop", "sleep", "test.record"} <= set(types)
    assert types["sleep"]["served"] is True
    assert "seconds" in str(types["sleep"]["schema"])
    assert types["echo"]["schema"] == {}


async def test_strict_types_refuse_what_no_worker_serves_and_fill_defaults(
    settings: Settings, clean: None, bearer: Bearer, engine: AsyncEngine
) -> None:
    await TypeStore(engine).register(
        [("strict.thumb", THUMB, {"queue": "slow", "max_attempts": 7}), ("strict.gone", {}, {})]
    )
    async with engine.begin() as conn:  # its last worker left longer ago than the grace period
        await conn.execute(
            sa.text("UPDATE job_types SET last_seen = now() - interval '1 day' WHERE name = :n"),
            {"n": "strict.gone"},
        )
    async with AsyncTestClient(app=create_app(replace(settings, strict_types=True))) as api:
        h = await bearer()
        r = await api.post("/v1/jobs", json={"type": "strict.nope"}, headers=h)
        assert r.status_code == 422
        assert r.json()["errors"][0]["key"] == "type"
        assert "strict.thumb" in r.json()["detail"]  # what is served, to spot the typo
        r = await api.post(
            "/v1/jobs", json={"type": "strict.thumb", "payload": {"image": "a", "width": "wide"}},
            headers=h,
        )  # fmt: skip
        assert r.status_code == 422
        assert r.json()["errors"][0]["key"] == "payload"
        assert "width" in r.json()["detail"]
        ok = await api.post(
            "/v1/jobs", json={"type": "strict.thumb", "payload": {"image": "a"}}, headers=h
        )
        assert ok.status_code == 202, ok.text
        assert (ok.json()["queue"], ok.json()["max_attempts"]) == ("slow", 7)
        mine = await api.post(
            "/v1/jobs/batch",
            json={"jobs": [{"type": "strict.thumb", "payload": {"image": "b"}, "queue": "default",
                            "max_attempts": 2}]},
            headers=h,
        )  # fmt: skip
        assert mine.status_code == 202, mine.text
        assert (mine.json()["items"][0]["queue"], mine.json()["items"][0]["max_attempts"]) == (
            "default", 2,
        )  # fmt: skip
        gone = await api.post("/v1/jobs", json={"type": "strict.gone"}, headers=h)
        assert gone.status_code == 422
        assert "strict.gone" not in gone.json()["detail"].split("served:")[1]


async def test_without_strict_types_any_type_is_taken(
    api: AsyncTestClient[Litestar], bearer: Bearer
) -> None:
    r = await api.post("/v1/jobs", json={"type": "nobody.serves.this"}, headers=await bearer())
    assert r.status_code == 202
    assert r.json()["queue"] == "default"


WORKER = ("jobs:write", "jobs:read", "jobs:work")


async def test_an_http_worker_registers_types_for_its_own_tenant_only(
    settings: Settings, clean: None, bearer: Bearer, engine: AsyncEngine
) -> None:
    await TypeStore(engine).register([("shared.kind", THUMB, {"max_attempts": 4})])
    async with AsyncTestClient(app=create_app(replace(settings, strict_types=True))) as api:
        acme, globex = await bearer("acme", WORKER), await bearer("globex", WORKER)
        mine = {"name": "acme.resize", "schema": {"type": "object", "required": ["url"]},
                "defaults": {"queue": "default", "max_attempts": 9}}  # fmt: skip
        # acme's own take on a cluster-wide type: its schema stands before the cluster's.
        shadow = {"name": "shared.kind", "schema": {"type": "integer"}}
        r = await api.post("/v1/types", json={"types": [mine, shadow]}, headers=acme)
        assert r.status_code == 200, r.text
        assert {(t["name"], t["tenant"], t["served"]) for t in r.json()["items"]} == {
            ("acme.resize", "acme", True), ("shared.kind", "acme", True),
        }  # fmt: skip
        ok = await api.post(
            "/v1/jobs", json={"type": "acme.resize", "payload": {"url": "u"}}, headers=acme
        )
        assert ok.status_code == 202, ok.text
        assert ok.json()["max_attempts"] == 9
        bad = await api.post("/v1/jobs", json={"type": "acme.resize", "payload": {}}, headers=acme)
        assert (bad.status_code, bad.json()["errors"][0]["key"]) == (422, "payload")
        assert (await api.post(
            "/v1/jobs", json={"type": "shared.kind", "payload": 7}, headers=acme
        )).status_code == 202  # fmt: skip
        # globex sees neither: the cluster's schema and defaults hold for it.
        other = await api.post("/v1/jobs", json={"type": "acme.resize"}, headers=globex)
        assert (other.status_code, other.json()["errors"][0]["key"]) == (422, "type")
        theirs = await api.post(
            "/v1/jobs", json={"type": "shared.kind", "payload": {"image": "a"}}, headers=globex
        )
        assert theirs.status_code == 202, theirs.text
        assert theirs.json()["max_attempts"] == 4
        listed = (await api.get("/v1/types", headers=globex)).json()["items"]
        assert [(t["name"], t["tenant"]) for t in listed] == [("shared.kind", None)]
        listed = (await api.get("/v1/types", headers=acme)).json()["items"]
        assert sorted((t["name"], t["tenant"]) for t in listed) == [
            ("acme.resize", "acme"), ("shared.kind", "acme"),
        ]  # fmt: skip


async def test_registering_types_needs_the_work_scope_and_a_valid_schema(
    api: AsyncTestClient[Litestar], bearer: Bearer
) -> None:
    reader = await bearer("acme", ("jobs:read", "jobs:write"))
    one = {"types": [{"name": "acme.x"}]}
    assert (await api.post("/v1/types", json=one, headers=reader)).status_code == 403
    h = await bearer("acme", WORKER)
    assert (await api.post("/v1/types", json=one, headers=h)).status_code == 200
    with socket.create_server(("127.0.0.1", 0)) as trap:  # a $ref there must never be fetched
        trap.settimeout(0.2)
        port = trap.getsockname()[1]
        bodies = [
            {"types": [{"name": "acme.x", "schema": {"type": "no-such-type"}}]},
            {"types": [{"name": "acme.x", "schema": {"$ref": f"http://127.0.0.1:{port}/s"}}]},
            {"types": [{"name": "acme.x", "schema": {"x": "y" * 70_000}}]},
            {"types": [{"name": "acme.x"}, {"name": "acme.x"}]},
            {"types": [{"name": "Not A Name"}]},
            {"types": [{"name": "acme.x", "defaults": {"max_attempts": 0}}]},
            {"types": [{"name": "acme.x", "defaults": {"tenant": "globex"}}]},
            {"types": []},
        ]
        for body in bodies:
            r = await api.post("/v1/types", json=body, headers=h)
            assert r.status_code == 422, (body, r.status_code, r.text)
        with contextlib.suppress(TimeoutError):
            trap.accept()
            raise AssertionError("the API fetched a schema's $ref")
