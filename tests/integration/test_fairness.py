"""Fair dispatch and limits (docs/design.md §2.2), on real PostgreSQL and RabbitMQ with
in-process workers, schedulers and dispatchers."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import replace
from datetime import datetime
from typing import Any

import pytest
import sqlalchemy as sa
from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import AsyncEngine

from services.api.app import create_app
from services.scheduler.dispatcher import Dispatcher
from services.scheduler.loop import Scheduler
from shared.config import Settings
from shared.db.dispatch import DispatchStore
from shared.db.leases import LeaseStore
from shared.db.submits import SubmitStore
from shared.db.tickets import TicketStore
from shared.liveness import Liveness
from shared.messaging import Broker
from shared.outbox import Outbox
from tests import audit
from tests.conftest import Bearer
from tests.integration.conftest import StartWorker, ticking, wait_for
from tests.integration.test_api import wait_status
from tests.integration.test_worker import new_job
from tests.procs import REPO_ROOT

Client = AsyncTestClient[Litestar]
README = REPO_ROOT / "README.md"
pytestmark = pytest.mark.integration
Dispatching = Callable[..., AbstractAsyncContextManager[list[Dispatcher]]]


@pytest.fixture
def dispatching(settings: Settings, engine: AsyncEngine) -> Dispatching:
    """Run ``n`` dispatchers (as ``n`` schedulers would) for the duration of the block."""

    @asynccontextmanager
    async def run(n: int = 1, depth: int | None = None) -> AsyncIterator[list[Dispatcher]]:
        broker = Broker(settings, "jobq-test-dispatcher")
        await broker.connect()
        outbox = Outbox(TicketStore(engine), broker, mark_delay=0)
        store = DispatchStore(
            engine, settings.fair_depth if depth is None else depth, settings.scheduler_batch_size
        )
        dispatchers = [
            Dispatcher(settings, store, outbox, Liveness(60, ["dispatch"])) for _ in range(n)
        ]
        stop = asyncio.Event()
        tasks = [asyncio.create_task(d.run(stop)) for d in dispatchers]
        try:
            yield dispatchers
        finally:
            stop.set()
            await asyncio.gather(*tasks)
            await broker.close()

    return run


async def submit(api: Client, h: dict[str, str], **body: Any) -> dict[str, Any]:
    r = await api.post("/v1/jobs", json=body, headers=h)
    assert r.status_code == 202, r.text
    return dict(r.json())


async def runs(engine: AsyncEngine, where: str, **params: Any) -> list[tuple[datetime, datetime]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            sa.text(f"SELECT started_at, finished_at FROM jobs WHERE {where}"), params
        )
        return [(r.started_at, r.finished_at) for r in rows]


def most_at_once(spans: list[tuple[datetime, datetime]]) -> int:
    """The most intervals that overlap at any instant."""
    return audit.peak([(s, 1) for s, _ in spans] + [(f, -1) for _, f in spans])


async def test_a_concurrency_key_runs_at_most_its_limit_at_once_across_workers(
    bearer: Bearer,
    api: Client,
    engine: AsyncEngine,
    scheduler: Scheduler,
    start_worker: StartWorker,
    dispatching: Dispatching,
) -> None:
    h = await bearer()
    keyed = [
        await submit(
            api,
            h,
            type="sleep",
            payload={"seconds": 0.3},
            concurrency_key="customer-x",
            concurrency_limit=2,
        )
        for _ in range(6)
    ]
    other = await submit(api, h, type="sleep", payload={"seconds": 0.3}, concurrency_key="y")
    assert keyed[0]["held"] is True
    assert (keyed[0]["concurrency_key"], keyed[0]["concurrency_limit"]) == ("customer-x", 2)
    assert other["concurrency_limit"] == 1
    await start_worker(worker_concurrency=8)
    await start_worker(worker_concurrency=8)
    async with ticking(scheduler), dispatching(n=2):
        for job in [*keyed, other]:
            await wait_status(api, h, job["id"], "succeeded")
    spans = await runs(engine, "concurrency_key = 'customer-x'")
    assert most_at_once(spans) == 2
    assert len(spans) == 6


async def test_a_queue_limit_and_a_tenant_limit_hold_across_workers(
    bearer: Bearer,
    api: Client,
    engine: AsyncEngine,
    scheduler: Scheduler,
    start_worker: StartWorker,
    dispatching: Dispatching,
) -> None:
    admin, h, other = await bearer(scopes=["admin"]), await bearer("acme"), await bearer("globex")
    r = await api.patch("/v1/admin/queues/default", json={"max_running": 3}, headers=admin)
    assert (r.status_code, r.json()["max_running"]) == (200, 3), r.text
    r = await api.put("/v1/admin/tenants/acme/limits", json={"max_running": 1}, headers=admin)
    assert r.status_code == 200, r.text
    assert r.json()["max_running"] == 1
    ids = [
        (await submit(api, tenant, type="sleep", payload={"seconds": 0.25}))["id"]
        for tenant in (h, h, h, other, other, other, other, other)
    ]
    await start_worker(worker_concurrency=8)
    async with ticking(scheduler), dispatching():
        for i, job_id in enumerate(ids):
            await wait_status(api, h if i < 3 else other, job_id, "succeeded")
    assert most_at_once(await runs(engine, "tenant = 'acme'")) == 1
    assert most_at_once(await runs(engine, "true")) == 3
    r = await api.delete("/v1/admin/tenants/acme/limits", headers=admin)
    assert r.status_code == 204
    assert (await api.get("/v1/admin/tenants/acme/limits", headers=admin)).status_code == 404


async def test_a_tenant_rate_limit_spaces_its_starts(
    bearer: Bearer,
    api: Client,
    engine: AsyncEngine,
    scheduler: Scheduler,
    start_worker: StartWorker,
    dispatching: Dispatching,
) -> None:
    admin, h = await bearer(scopes=["admin"]), await bearer()
    body = {"starts_per_second": 5, "burst": 2}
    assert (await api.put("/v1/admin/tenants/acme/limits", json=body, headers=admin)).json()[
        "burst"
    ] == 2
    ids = [(await submit(api, h, type="noop"))["id"] for _ in range(7)]
    await start_worker()
    async with ticking(scheduler), dispatching():
        for job_id in ids:
            await wait_status(api, h, job_id, "succeeded")
    starts = sorted(s for s, _ in await runs(engine, "tenant = 'acme'"))
    # two at once from the burst, then one every 0.2 s: five more take at least 0.8 s
    assert (starts[-1] - starts[0]).total_seconds() >= 0.8


async def test_a_flood_from_one_tenant_does_not_queue_ahead_of_another(
    bearer: Bearer,
    api: Client,
    engine: AsyncEngine,
    settings: Settings,
    scheduler: Scheduler,
    start_worker: StartWorker,
    dispatching: Dispatching,
) -> None:
    """The flood's first batch goes out and fills RabbitMQ's queue past its depth (20 here);
    the dispatcher's next pass marks the queue congested, so the flood's second batch is held,
    and so are the victim's jobs, which go out in the first turns of the next pass."""
    flood_h, victim_h = await bearer("flood"), await bearer("victim")
    depth = 20
    body = {"jobs": [{"type": "sleep", "payload": {"seconds": 0.01}} for _ in range(400)]}
    app = create_app(replace(settings, fair_depth=depth))
    async with AsyncTestClient(app=app) as client:
        r = await client.post("/v1/jobs/batch", json=body, headers=flood_h)
        assert r.status_code == 202, r.text
        assert sum(not j["held"] for j in r.json()["items"]) == 400  # the queue was empty
        async with dispatching(depth=depth):
            await wait_for(lambda: _congested(engine))
        r = await client.post("/v1/jobs/batch", json=body, headers=flood_h)
        assert all(j["held"] for j in r.json()["items"])  # 400 tickets wait in RabbitMQ
        victims = [
            (await client.post("/v1/jobs", json={"type": "noop"}, headers=victim_h)).json()
            for _ in range(5)
        ]
    assert all(v["held"] for v in victims)
    await start_worker(worker_concurrency=4)
    async with ticking(scheduler), dispatching(depth=depth):
        for v in victims:
            await wait_status(api, victim_h, v["id"], "succeeded")
        async with engine.connect() as conn:
            flood_started = await conn.scalar(
                sa.text(
                    "SELECT count(*) FROM jobs WHERE tenant = 'flood' AND started_at IS NOT NULL"
                )
            )
        # the rest of the flood drains here, not in the worker's shutdown at teardown
        await wait_for(lambda: _succeeded(engine, 800 + len(victims)), within=60)
    # the victim waited for the first batch (already in RabbitMQ) and a turn, not the second
    assert flood_started < 400 + depth + 50


async def _succeeded(engine: AsyncEngine, n: int) -> bool:
    async with engine.connect() as conn:
        done = await conn.scalar(sa.text("SELECT count(*) FROM jobs WHERE status = 'succeeded'"))
    return bool(done == n)


async def _congested(engine: AsyncEngine) -> bool:
    async with engine.connect() as conn:
        flag = await conn.scalar(sa.text("SELECT congested FROM queues WHERE name = 'default'"))
    return bool(flag)


async def test_held_jobs_are_not_leased_to_http_workers(
    bearer: Bearer, api: Client, engine: AsyncEngine
) -> None:
    h = await bearer()
    worker = await bearer(scopes=["jobs:work"])
    job = await submit(api, h, type="noop", concurrency_key="k")
    r = await api.post(
        "/v1/leases", json={"queues": ["default"], "wait_seconds": 0}, headers=worker
    )
    assert r.status_code == 204, r.text
    async with engine.connect() as conn:
        held = await conn.scalar(
            sa.text("SELECT held FROM jobs WHERE id = :id"), {"id": uuid.UUID(job["id"])}
        )
    assert held is True


async def test_the_readme_example_is_held_for_its_key(bearer: Bearer, api: Client) -> None:
    section = README.read_text().split("\n## Fair sharing and limits\n", 1)[1].split("\n## ")[0]
    body = json.loads(section.split("-d '", 1)[1].split("'", 1)[0])
    r = await api.post("/v1/jobs", json=body, headers=await bearer())
    assert r.status_code == 202, r.text
    job = r.json()
    assert (job["status"], job["held"]) == ("queued", True)
    assert (job["concurrency_key"], job["concurrency_limit"]) == ("customer-42", 2)


async def test_a_keyed_job_whose_lease_runs_out_for_good_dies_with_its_dead_letter(
    engine: AsyncEngine, submits: SubmitStore, scheduler: Scheduler, broker: Broker
) -> None:
    """Held is for jobs that end queued: a keyed job killed on its last attempt is dead, and
    its ticket goes to the dead-letter exchange at once."""
    job = new_job(max_attempts=1, concurrency_key="k", concurrency_limit=1)
    [(row, _)] = await submits.insert([job])
    assert row.held
    store = DispatchStore(engine, 0, 10)
    assert [t.job_id for t in (await store.dispatch({})).tickets] == [row.id]
    [claimed], _ = await LeaseStore(engine).claim([row.id], lease_seconds=0.05)
    await asyncio.sleep(0.1)
    assert (await scheduler.tick())["expired"] == 1
    async with engine.connect() as conn:
        after = (
            await conn.execute(
                sa.text("SELECT status, held, published_at FROM jobs WHERE id = :id"),
                {"id": row.id},
            )
        ).one()
    assert (after.status, after.held) == ("dead", False)
    assert after.published_at is not None  # its dead letter was published and confirmed
    assert claimed.id == row.id
