"""The HTTP API against real PostgreSQL and RabbitMQ, with in-process workers."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from litestar import Litestar
from litestar.testing import AsyncTestClient
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.config import Settings
from shared.db.jobs import JobStore
from tests.conftest import Bearer, jobs_of
from tests.integration.conftest import StartWorker, ticking, wait_for

Client = AsyncTestClient[Litestar]
pytestmark = pytest.mark.integration


async def job_status(api: Client, headers: dict[str, str], job_id: str) -> dict[str, Any]:
    r = await api.get(f"/v1/jobs/{job_id}", headers=headers)
    assert r.status_code == 200, r.text
    return dict(r.json())


async def wait_status(
    api: Client, headers: dict[str, str], job_id: str, status: str
) -> dict[str, Any]:
    async def reached() -> dict[str, Any] | None:
        job = await job_status(api, headers, job_id)
        return job if job["status"] == status else None

    result: dict[str, Any] = await wait_for(reached)
    return result


async def test_a_submitted_job_runs_and_succeeds_with_its_result(
    bearer: Bearer, api: Client, settings: Settings, start_worker: StartWorker
) -> None:
    await start_worker()
    h = await bearer()
    r = await api.post("/v1/jobs", json={"type": "echo", "payload": {"n": 1}}, headers=h)
    assert r.status_code == 202, r.text
    assert r.headers["location"] == f"/v1/jobs/{r.json()['id']}"
    assert r.json()["payload"] == {"n": 1}
    assert r.json()["status"] == "queued"
    job = await wait_status(api, h, r.json()["id"], "succeeded")
    assert job["result"] == {"n": 1}
    assert job["attempts"] == 1
    assert job["started_at"]
    assert job["finished_at"]


async def test_one_trace_follows_the_job_from_submit_to_handler(
    bearer: Bearer,
    api: Client,
    settings: Settings,
    start_worker: StartWorker,
    spans: InMemorySpanExporter,
) -> None:
    await start_worker()
    h = await bearer()
    r = await api.post("/v1/jobs", json={"type": "noop"}, headers=h)
    await wait_status(api, h, r.json()["id"], "succeeded")
    run = await wait_for(
        lambda: [s for s in spans.get_finished_spans() if s.name == "jobq.run noop"]
    )
    server = [s for s in spans.get_finished_spans() if s.name.startswith("POST /v1/jobs")]
    assert server, [s.name for s in spans.get_finished_spans()]
    publish = [s for s in spans.get_finished_spans() if s.name.startswith("publish ")]
    assert run[0].context.trace_id == server[0].context.trace_id
    assert publish[0].context.trace_id == server[0].context.trace_id
    assert r.json()["trace_id"] == f"{run[0].context.trace_id:032x}"


async def test_the_same_idempotency_key_returns_the_original_job(
    bearer: Bearer, api: Client, settings: Settings, store: JobStore
) -> None:
    h = {**await bearer(), "Idempotency-Key": "order-42"}
    first = await api.post("/v1/jobs", json={"type": "noop"}, headers=h)
    again = await api.post("/v1/jobs", json={"type": "noop"}, headers=h)
    other_tenant = await api.post(
        "/v1/jobs",
        json={"type": "noop"},
        headers={**await bearer("globex"), "Idempotency-Key": "order-42"},
    )
    assert (first.status_code, again.status_code, other_tenant.status_code) == (202, 200, 202)
    assert first.json()["id"] == again.json()["id"] != other_tenant.json()["id"]
    assert len(await jobs_of(store, "acme")) == 1


async def test_an_idempotency_key_reused_for_another_request_is_422_and_writes_nothing(
    bearer: Bearer, api: Client, store: JobStore, engine: AsyncEngine
) -> None:
    h = {**await bearer(), "Idempotency-Key": "order-7", "Content-Type": "application/json"}
    body = b'{"type": "echo", "payload": {"to": "a@example.com", "n": 1}, "priority": 3}'
    first = await api.post("/v1/jobs", content=body, headers=h)
    assert first.status_code == 202
    # The same request spelled differently (key order, spacing, a default made explicit).
    same = b'{"priority":3,"queue":"default","payload":{"n":1,"to":"a@example.com"},"type":"echo"}'
    again = await api.post("/v1/jobs", content=same, headers=h)
    assert (again.status_code, again.json()["id"]) == (200, first.json()["id"])
    for other in (
        b'{"type": "echo", "payload": {"to": "b@example.com", "n": 1}, "priority": 3}',
        b'{"type": "echo", "payload": {"to": "a@example.com", "n": 1}, "priority": 4}',
        b'{"type": "noop"}',
    ):
        r = await api.post("/v1/jobs", content=other, headers=h)
        assert r.status_code == 422, r.text
        assert "Idempotency-Key was used with a different request" in r.json()["detail"]
    batch: dict[str, list[dict[str, Any]]] = {
        "jobs": [
            {"type": "noop"},
            {"type": "echo", "payload": {"to": "a@example.com", "n": 1}, "priority": 3,
             "idempotency_key": "order-7"},
            {"type": "noop", "idempotency_key": "order-8"},
        ]
    }  # fmt: skip
    replay = await api.post("/v1/jobs/batch", json=batch, headers=h)
    assert replay.status_code == 202
    assert replay.json()["items"][1]["id"] == first.json()["id"]
    assert len(await jobs_of(store, "acme")) == 3
    batch["jobs"][2]["payload"] = "changed"
    batch["jobs"].append({"type": "noop"})
    spoiled = await api.post("/v1/jobs/batch", json=batch, headers=h)
    assert spoiled.status_code == 422, "order-8 named another request: the batch is refused whole"
    assert len(await jobs_of(store, "acme")) == 3
    # Jobs made before digests were kept answer a reused key as before.
    async with engine.begin() as conn:
        await conn.execute(sa.text("UPDATE jobs SET request_digest = NULL"))
    legacy = await api.post("/v1/jobs", json={"type": "noop"}, headers=h)
    assert (legacy.status_code, legacy.json()["id"]) == (200, first.json()["id"])


async def test_a_delayed_job_does_not_run_before_its_time(
    bearer: Bearer, api: Client, settings: Settings, start_worker: StartWorker, scheduler: Any
) -> None:
    await start_worker()
    async with ticking(scheduler):
        h = await bearer()
        r = await api.post("/v1/jobs", json={"type": "noop", "delay_seconds": 1.5}, headers=h)
        assert r.json()["status"] == "scheduled"
        await asyncio.sleep(0.8)
        assert (await job_status(api, h, r.json()["id"]))["status"] == "scheduled"
        job = await wait_status(api, h, r.json()["id"], "succeeded")
        assert datetime.fromisoformat(job["started_at"]) >= datetime.fromisoformat(job["run_at"])
        run_at = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        later = await api.post("/v1/jobs", json={"type": "noop", "run_at": run_at}, headers=h)
        assert later.json()["status"] == "scheduled"


async def test_cancel_and_retry(
    bearer: Bearer, api: Client, settings: Settings, start_worker: StartWorker
) -> None:
    h = await bearer()
    r = await api.post("/v1/jobs", json={"type": "noop", "delay_seconds": 60}, headers=h)
    job_id = r.json()["id"]
    canceled = await api.post(f"/v1/jobs/{job_id}/cancel", headers=h)
    assert canceled.status_code == 200
    assert canceled.json()["status"] == "canceled"
    assert (await api.post(f"/v1/jobs/{job_id}/cancel", headers=h)).status_code == 409
    await start_worker()
    retried = await api.post(f"/v1/jobs/{job_id}/retry", headers=h)
    assert retried.status_code == 200
    assert retried.json()["status"] == "queued"
    await wait_status(api, h, job_id, "succeeded")
    assert (await api.post(f"/v1/jobs/{job_id}/retry", headers=h)).status_code == 409
    assert (await api.post(f"/v1/jobs/{uuid.uuid4()}/retry", headers=h)).status_code == 404


async def test_a_running_job_is_canceled_at_its_next_heartbeat(
    bearer: Bearer, api: Client, settings: Settings, start_worker: StartWorker
) -> None:
    await start_worker(lease_seconds=1.5)
    h = await bearer()
    r = await api.post("/v1/jobs", json={"type": "sleep", "payload": {"seconds": 30}}, headers=h)
    await wait_status(api, h, r.json()["id"], "running")
    asked = await api.post(f"/v1/jobs/{r.json()['id']}/cancel", headers=h)
    assert asked.json()["cancel_requested"] is True
    job = await wait_status(api, h, r.json()["id"], "canceled")
    assert job["result"] is None


async def test_tenants_cannot_see_or_touch_each_others_jobs(
    bearer: Bearer, api: Client, settings: Settings
) -> None:
    a, b = await bearer("tenant-a"), await bearer("tenant-b")
    job_id = (
        await api.post("/v1/jobs", json={"type": "noop", "delay_seconds": 60}, headers=a)
    ).json()["id"]
    assert (await api.get(f"/v1/jobs/{job_id}", headers=b)).status_code == 404
    assert (await api.post(f"/v1/jobs/{job_id}/cancel", headers=b)).status_code == 404
    assert (await api.post(f"/v1/jobs/{job_id}/retry", headers=b)).status_code == 404
    assert (await api.get("/v1/jobs", headers=b)).json()["items"] == []
    assert (await api.get("/v1/jobs?tenant=tenant-a", headers=b)).json()["items"] == []
    assert (await api.get(f"/v1/jobs/{job_id}", headers=a)).status_code == 200


async def test_a_missing_scope_is_403(bearer: Bearer, api: Client, settings: Settings) -> None:
    read_only = await bearer(scopes=["jobs:read"])
    write_only = await bearer(scopes=["jobs:write"])
    r = await api.post("/v1/jobs", json={"type": "noop"}, headers=read_only)
    assert r.status_code == 403
    assert r.headers["content-type"].startswith("application/problem+json")
    assert "jobs:write" in r.json()["detail"]
    assert (await api.get("/v1/jobs", headers=write_only)).status_code == 403
    assert (await api.get("/v1/queues", headers=write_only)).status_code == 403


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer not-a-jwt", "Basic dXNlcjpwYXNz", "Bearer a.b.c"],
)
async def test_a_missing_or_bad_token_is_401(api: Client, authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    r = await api.get("/v1/jobs", headers=headers)
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert r.json()["status"] == 401


async def test_a_token_signed_with_another_secret_is_401(
    bearer: Bearer, api: Client, settings: Settings
) -> None:
    from dataclasses import replace

    forged = await bearer(signed_by=replace(settings, jwt_secret="another-secret-" + "y" * 40))
    assert (await api.get("/v1/jobs", headers=forged)).status_code == 401


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        (b'{"type": "noop"', 400, None),
        (b"not json at all", 400, None),
        (b'{"type": "Not A Type"}', 422, "type"),
        (b'{"type": "noop", "priority": 10}', 422, "priority"),
        (b'{"type": "noop", "max_attempts": 0}', 422, "max_attempts"),
        (b'{"type": "noop", "delay_seconds": -1}', 422, "delay_seconds"),
        (b'{"type": "noop", "status": "succeeded"}', 422, "status"),
        (b'{"type": "noop", "tenant": "other"}', 422, "tenant"),
        (b'{"payload": {}}', 422, "type"),
        (b'{"type": "noop", "payload": "\\u0000"}', 422, None),
        (b'{"type": "noop", "delay_seconds": 5, "run_at": "2030-01-01T00:00:00Z"}', 422, None),
    ],
)
async def test_bad_bodies_get_a_clear_4xx_and_write_nothing(
    bearer: Bearer,
    api: Client,
    settings: Settings,
    store: JobStore,
    body: bytes,
    status: int,
    field: str | None,
) -> None:
    h = {**await bearer(), "Content-Type": "application/json"}
    r = await api.post("/v1/jobs", content=body, headers=h)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    if field:
        assert field in json.dumps(r.json())
    assert await jobs_of(store, "acme") == []


async def test_an_oversized_payload_is_413(
    bearer: Bearer, api: Client, settings: Settings, store: JobStore
) -> None:
    h = await bearer()
    big = "x" * (settings.max_payload_bytes + 1)
    r = await api.post("/v1/jobs", json={"type": "noop", "payload": big}, headers=h)
    assert r.status_code == 413
    huge = b'{"type": "noop", "payload": "' + b"y" * settings.max_request_bytes + b'"}'
    r = await api.post("/v1/jobs", content=huge, headers={**h, "Content-Type": "application/json"})
    assert r.status_code == 413
    assert await jobs_of(store, "acme") == []


async def test_a_batch_is_one_transaction(
    bearer: Bearer, api: Client, settings: Settings, store: JobStore
) -> None:
    h = await bearer()
    jobs = [{"type": "noop", "idempotency_key": f"k{i}"} for i in range(3)]
    r = await api.post("/v1/jobs/batch", json={"jobs": jobs}, headers=h)
    assert r.status_code == 202
    assert len(r.json()["items"]) == 3
    bad = [*jobs, {"type": "BAD"}]
    assert (await api.post("/v1/jobs/batch", json={"jobs": bad}, headers=h)).status_code == 422
    too_many = [{"type": "noop"}] * (settings.max_batch_jobs + 1)
    assert (await api.post("/v1/jobs/batch", json={"jobs": too_many}, headers=h)).status_code == 422
    assert len(await jobs_of(store, "acme")) == 3


async def test_listing_filters_and_pages_with_a_cursor(
    bearer: Bearer, api: Client, settings: Settings
) -> None:
    h = await bearer()
    jobs = [{"type": "noop" if i % 2 else "echo", "delay_seconds": 60} for i in range(5)]
    await api.post("/v1/jobs/batch", json={"jobs": jobs}, headers=h)
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await api.get("/v1/jobs", params=params, headers=h)).json()
        seen += [j["id"] for j in page["items"]]
        if not (cursor := page["next_cursor"]):
            break
    assert len(seen) == len(set(seen)) == 5
    assert seen == sorted(seen, reverse=True)
    echo = (await api.get("/v1/jobs", params={"type": "echo"}, headers=h)).json()["items"]
    assert len(echo) == 3
    assert (await api.get("/v1/jobs", params={"status": "scheduled"}, headers=h)).json()["items"]
    assert (await api.get("/v1/jobs", params={"limit": 501}, headers=h)).status_code in (400, 422)
    assert (await api.get("/v1/jobs", params={"cursor": "%%%"}, headers=h)).status_code in (
        400,
        422,
    )
    assert (await api.get("/v1/jobs", params={"status": "weird"}, headers=h)).status_code in (
        400,
        422,
    )


async def test_health_readiness_schema_and_queues(
    bearer: Bearer, api: Client, settings: Settings
) -> None:
    assert (await api.get("/health")).json() == {"status": "ok"}
    assert (await api.get("/health/ready")).status_code == 200
    schema = (await api.get("/schema/openapi.json")).json()
    assert "/v1/jobs" in schema["paths"]
    assert "/v1/jobs/batch" in schema["paths"]
    h = await bearer()
    await api.post("/v1/jobs", json={"type": "noop", "queue": "email"}, headers=h)
    queues = (await api.get("/v1/queues", headers=h)).json()["items"]
    email = next(q for q in queues if q["name"] == "email")
    assert email["counts"] == {"queued": 1}
    assert email["broker"] is None  # RabbitMQ's figures count every tenant: for admins


async def test_client_credentials_grant_a_token(api: Client, settings: Settings) -> None:
    from services.cli import _create_client

    created = await _create_client(settings, "app", "acme", ["jobs:read"])
    cid, secret = created["client_id"], created["client_secret"]
    form = {"grant_type": "client_credentials", "client_id": cid, "client_secret": secret}
    r = await api.post("/v1/auth/token", data=form)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["token_type"] == "Bearer"
    assert body["scope"] == "jobs:read"
    listed = await api.get("/v1/jobs", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert listed.status_code == 200
    basic = await api.post(
        "/v1/auth/token", data={"grant_type": "client_credentials"}, auth=(cid, secret)
    )
    assert basic.status_code == 200
    wrong = await api.post("/v1/auth/token", data={**form, "client_secret": secret + "x"})
    assert wrong.status_code == 401
    assert wrong.json()["error"] == "invalid_client"
    assert secret not in wrong.text
    greedy = await api.post("/v1/auth/token", data={**form, "scope": "jobs:read admin"})
    assert (greedy.status_code, greedy.json()["error"]) == (400, "invalid_scope")
    implicit = await api.post("/v1/auth/token", data={**form, "grant_type": "password"})
    assert (implicit.status_code, implicit.json()["error"]) == (400, "unsupported_grant_type")
    broader = await api.post("/v1/auth/token", data={**form, "scope": "admin"})
    assert broader.status_code in (400, 422)
