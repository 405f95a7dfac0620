"""Queues are resources an operator declares: a client cannot make the broker grow, a tenant
sees only its own activity, and a queue is deleted only when nothing would be lost."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import aio_pika
import aiormq
import pytest
import sqlalchemy as sa
from litestar import Litestar
from litestar.testing import AsyncTestClient
from opentelemetry.trace import NoOpTracer
from sqlalchemy.ext.asyncio import AsyncEngine

from services.api.app import create_app
from services.api.broker_stats import BrokerStats
from shared.config import Settings
from shared.db.engine import make_engine
from shared.db.jobs import JobStore
from shared.db.migrate import upgrade
from shared.db.queues import QueueStore
from shared.errors import DependencyUnavailable
from shared.runtime import check_database, service_resources
from tests.conftest import Bearer, jobs_of
from tests.integration.conftest import StartWorker, listening
from tests.services import create_database, drop_database

Client = AsyncTestClient[Litestar]
pytestmark = pytest.mark.integration
ADMIN = ["admin", "jobs:read", "jobs:write"]


async def broker_has(settings: Settings, queue: str) -> bool:
    """Whether RabbitMQ holds the job queue ``queue`` (a passive declare on a throwaway
    connection: a missing queue closes the channel)."""
    conn = await aio_pika.connect(settings.amqp_url)
    try:
        ch = await conn.channel()
        await ch.declare_queue(f"{settings.broker_prefix}.q.{queue}", passive=True)
        return True
    except aiormq.exceptions.ChannelNotFoundEntity:
        return False
    finally:
        await conn.close()


async def test_a_submit_to_an_undeclared_queue_is_422_and_creates_nothing(
    api: Client, bearer: Bearer, store: JobStore, settings: Settings
) -> None:
    h = await bearer()
    names = [f"made-up-{i}" for i in range(20)]
    for name in names:
        r = await api.post("/v1/jobs", json={"type": "noop", "queue": name}, headers=h)
        assert r.status_code == 422, r.text
        assert r.json()["errors"][0]["key"] == "queue"
        assert "not declared" in r.json()["detail"]
    batch = {"jobs": [{"type": "noop"}, *({"type": "noop", "queue": n} for n in names)]}
    assert (await api.post("/v1/jobs/batch", json=batch, headers=h)).status_code == 422
    assert await jobs_of(store, "acme") == []  # the batch's good job was not taken either
    for name in names[:3]:
        assert not await broker_has(settings, name)


async def test_an_admin_declares_changes_and_deletes_a_queue(
    api: Client, bearer: Bearer, settings: Settings
) -> None:
    admin, h = await bearer(scopes=ADMIN), await bearer("acme")
    body = {"name": "reports", "max_attempts": 7, "timeout_seconds": 42, "description": "nightly"}
    r = await api.post("/v1/admin/queues", json=body, headers=admin)
    assert r.status_code == 201, r.text
    assert r.headers["location"] == "/v1/admin/queues/reports"
    assert await broker_has(settings, "reports")
    assert (await api.post("/v1/admin/queues", json=body, headers=admin)).status_code == 409
    job = (await api.post("/v1/jobs", json={"type": "noop", "queue": "reports"}, headers=h)).json()
    assert (job["max_attempts"], job["timeout_seconds"]) == (7, 42)
    explicit = {"type": "noop", "queue": "reports", "max_attempts": 2, "timeout_seconds": 5}
    own = (await api.post("/v1/jobs", json=explicit, headers=h)).json()
    assert (own["max_attempts"], own["timeout_seconds"]) == (2, 5)

    r = await api.patch("/v1/admin/queues/reports", json={"max_attempts": 9}, headers=admin)
    assert r.status_code == 200, r.text
    assert (r.json()["max_attempts"], r.json()["timeout_seconds"]) == (9, 42)
    later = (
        await api.post("/v1/jobs", json={"type": "noop", "queue": "reports"}, headers=h)
    ).json()
    assert later["max_attempts"] == 9
    assert (await api.get(f"/v1/jobs/{job['id']}", headers=h)).json()["max_attempts"] == 7

    busy = await api.delete("/v1/admin/queues/reports", headers=admin)
    assert busy.status_code == 409
    assert "3 unfinished jobs" in busy.json()["detail"]
    for j in (job, own, later):
        await api.post(f"/v1/jobs/{j['id']}/cancel", headers=h)
    assert (await api.delete("/v1/admin/queues/reports", headers=admin)).status_code == 204
    assert not await broker_has(settings, "reports")
    refused = await api.post("/v1/jobs", json={"type": "noop", "queue": "reports"}, headers=h)
    assert refused.status_code == 422
    kept = await api.get(f"/v1/jobs/{job['id']}", headers=h)
    assert kept.json()["status"] == "canceled"  # finished jobs stay readable
    retry = await api.post(f"/v1/jobs/{job['id']}/retry", headers=h)
    assert retry.status_code == 409
    assert "declare it again" in retry.json()["detail"]
    assert (await api.get("/v1/admin/queues/reports", headers=admin)).status_code == 404
    assert (await api.delete("/v1/admin/queues/reports", headers=admin)).status_code == 404


@pytest.mark.parametrize(
    "body",
    [
        {"name": "Bad Name"},
        {"name": "x" * 65},
        {"name": "ok", "max_attempts": 0},
        {"name": "ok", "max_attempts": "3"},
        {"name": "ok", "timeout_seconds": 604801},
        {"name": "ok", "description": "a\nb"},
        {"name": "ok", "x-max-length": 1},
    ],
)
async def test_bad_queue_bodies_are_422_and_declare_nothing(
    api: Client, bearer: Bearer, body: dict[str, Any]
) -> None:
    admin = await bearer(scopes=ADMIN)
    r = await api.post("/v1/admin/queues", json=body, headers=admin)
    assert r.status_code == 422, r.text
    listed = (await api.get("/v1/admin/queues", headers=admin)).json()["items"]
    assert {q["name"] for q in listed} == {"default", "other", "email", "slow"}


async def test_the_default_queue_stays_and_names_that_cannot_exist_are_404(
    api: Client, bearer: Bearer
) -> None:
    admin = await bearer(scopes=ADMIN)
    assert (await api.delete("/v1/admin/queues/default", headers=admin)).status_code == 409
    for name in ("nope", "Bad%20Name", "a%00b", "x" * 300):
        for method in ("GET", "DELETE"):
            r = await api.request(method, f"/v1/admin/queues/{name}", headers=admin)
            assert r.status_code == 404, (method, name, r.text)
        r = await api.patch(f"/v1/admin/queues/{name}", json={"max_attempts": 2}, headers=admin)
        assert r.status_code == 404


async def test_a_queue_with_a_consumer_is_not_deleted(
    api: Client, bearer: Bearer, start_worker: StartWorker, settings: Settings
) -> None:
    admin = await bearer(scopes=ADMIN)
    await api.post("/v1/admin/queues", json={"name": "watched"}, headers=admin)
    worker = await start_worker(worker_queues="watched")
    r = await api.delete("/v1/admin/queues/watched", headers=admin)
    assert r.status_code == 409
    assert "consumers" in r.json()["detail"]
    assert (await api.get("/v1/admin/queues/watched", headers=admin)).status_code == 200
    await worker.shutdown()
    assert (await api.delete("/v1/admin/queues/watched", headers=admin)).status_code == 204


async def test_a_delete_waits_for_a_submit_in_flight_and_then_sees_its_job(
    settings: Settings, bearer: Bearer, engine: AsyncEngine
) -> None:
    """A submit holds its queue's row FOR KEY SHARE until it commits (as the INSERT does);
    the delete waits for it, then counts the job it added and refuses."""
    admin = await bearer(scopes=ADMIN)
    async with listening(settings) as api, engine.connect() as submit:
        await api.post("/v1/admin/queues", json={"name": "racing"}, headers=admin)
        tx = await submit.begin()
        await submit.execute(sa.text("SELECT 1 FROM queues WHERE name = 'racing' FOR KEY SHARE"))
        await submit.execute(
            sa.text(
                "INSERT INTO jobs (id, tenant, type, queue, payload, priority, status,"
                " max_attempts, timeout_seconds) VALUES (gen_random_uuid(), 'acme', 'noop',"
                " 'racing', 'null', 5, 'queued', 3, 300)"
            )
        )
        deleting = asyncio.create_task(api.delete("/v1/admin/queues/racing", headers=admin))
        await asyncio.sleep(0.5)
        assert not deleting.done(), "the delete must wait for the submit in flight"
        await tx.commit()
        r = await asyncio.wait_for(deleting, 10)
    assert r.status_code == 409
    assert "1 unfinished jobs" in r.json()["detail"]


async def test_a_submit_waits_for_a_delete_in_flight_and_then_is_refused(
    settings: Settings, bearer: Bearer, engine: AsyncEngine, store: JobStore
) -> None:
    admin, h = await bearer(scopes=ADMIN), await bearer()
    async with listening(settings) as api, engine.connect() as deleting:
        await api.post("/v1/admin/queues", json={"name": "going"}, headers=admin)
        tx = await deleting.begin()
        await deleting.execute(sa.text("SELECT 1 FROM queues WHERE name = 'going' FOR UPDATE"))
        await deleting.execute(sa.text("DELETE FROM queues WHERE name = 'going'"))
        submit = asyncio.create_task(
            api.post("/v1/jobs", json={"type": "noop", "queue": "going"}, headers=h)
        )
        await asyncio.sleep(0.5)
        assert not submit.done(), "the submit must wait for the delete in flight"
        await tx.commit()
        r = await asyncio.wait_for(submit, 10)
    assert r.status_code == 422
    assert await jobs_of(store, "acme") == []


async def test_a_tenant_sees_declared_queues_with_its_own_counts_and_no_broker_figures(
    api: Client, bearer: Bearer
) -> None:
    a, b = await bearer("tenant-a"), await bearer("tenant-b")
    for _ in range(3):
        await api.post("/v1/jobs", json={"type": "noop", "queue": "email"}, headers=a)
    seen = {q["name"]: q for q in (await api.get("/v1/queues", headers=b)).json()["items"]}
    assert set(seen) == {"default", "other", "email", "slow"}
    assert seen["email"]["counts"] == {}
    assert all(q["broker"] is None for q in seen.values())
    mine = {q["name"]: q for q in (await api.get("/v1/queues", headers=a)).json()["items"]}
    assert mine["email"]["counts"] == {"queued": 3}


async def test_broker_figures_are_for_admins_from_one_cached_management_call(
    settings: Settings, bearer: Bearer, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = 0
    fetch = BrokerStats._fetch

    async def counted(self: BrokerStats, client: Any) -> Any:
        nonlocal calls
        calls += 1
        return await fetch(self, client)

    monkeypatch.setattr(BrokerStats, "_fetch", counted)
    managed = replace(settings, management_url="http://guest:guest@127.0.0.1:15672")
    async with AsyncTestClient(app=create_app(managed)) as api:
        admin, h = await bearer(scopes=ADMIN), await bearer("acme")
        for _ in range(2):
            await api.post("/v1/jobs", json={"type": "noop", "queue": "slow"}, headers=h)
        answers = await asyncio.gather(
            *(api.get("/v1/queues", headers=admin) for _ in range(5)),
            *(api.get("/v1/admin/queues", headers=admin) for _ in range(5)),
        )
        tenant = (await api.get("/v1/queues", headers=h)).json()["items"]
    assert calls == 1
    for r in answers:
        slow = next(q for q in r.json()["items"] if q["name"] == "slow")
        # The management API samples its figures every few seconds: their shape, not values.
        assert set(slow["broker"]) == {"ready", "unacked", "consumers"}
    assert all(q["broker"] is None for q in tenant)
    admin_view = next(q for q in answers[-1].json()["items"] if q["name"] == "slow")
    assert admin_view["counts"] == {"queued": 2}


async def test_services_declare_the_configured_queues_at_start(
    settings: Settings, clean: None
) -> None:
    configured = replace(settings, queues="alpha, beta")
    async with service_resources(configured, "test", NoOpTracer()) as (engine, _):
        names = set(await QueueStore(engine).missing(["alpha", "beta", "default", "gamma"]))
    assert names == {"gamma"}
    assert await broker_has(settings, "alpha")


async def test_an_upgrade_declares_the_queues_unfinished_jobs_wait_in_and_no_others(
    base_settings: Settings,
) -> None:
    url = await create_database(base_settings.database_url, "jobq_upgrade", revision="0001")
    old = replace(base_settings, database_url=url)
    engine = make_engine(old, "upgrade-test", pool_size=1)
    try:
        with pytest.raises(DependencyUnavailable, match=r"at migration 0001.*jobq migrate"):
            await check_database(engine, old)
        async with engine.begin() as conn:
            for tenant, queue, status in [
                ("a", "waiting", "queued"), ("b", "later", "scheduled"),
                ("a", "done", "succeeded"), ("b", "default", "dead"),
            ]:  # fmt: skip
                await conn.execute(
                    sa.text(
                        "INSERT INTO jobs (id, tenant, type, queue, payload, priority, status,"
                        " max_attempts, timeout_seconds) VALUES (gen_random_uuid(), :tenant,"
                        " 'noop', :queue, 'null', 5, :status, 3, 300)"
                    ),
                    {"tenant": tenant, "queue": queue, "status": status},
                )
        await upgrade(old)
        await check_database(engine, old)
        declared = {q.name: q.description for q in await QueueStore(engine).all()}
    finally:
        await engine.dispose()
        await drop_database(url)
    assert set(declared) == {"default", "waiting", "later"}
    assert "review" in declared["waiting"]
