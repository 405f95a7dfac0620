"""The scheduler: lost publishes, purged queues, several replicas."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import aiormq
import pytest
import sqlalchemy as sa
from opentelemetry.sdk.trace import TracerProvider
from sqlalchemy.ext.asyncio import AsyncEngine

from services.scheduler.loop import Scheduler
from shared.config import Settings
from shared.db.jobs import JobStore
from shared.db.leases import LeaseStore
from shared.db.submits import SubmitStore
from shared.db.sweeps import SweepStore
from shared.db.tickets import TicketStore
from shared.domain import JobStatus
from shared.messaging import Broker
from shared.outbox import Outbox
from tests.integration.conftest import StartWorker, wait_for
from tests.integration.test_worker import final, new_job, submit

pytestmark = pytest.mark.integration


async def ready(broker: Broker, queue: str = "default") -> int:
    await broker.ensure_queue(queue)
    count, _ = await broker.queue_state(queue)
    return count


async def test_a_job_whose_publish_was_never_confirmed_is_published_again(
    store: JobStore,
    submits: SubmitStore,
    broker: Broker,
    scheduler: Scheduler,
    start_worker: StartWorker,
    settings: Settings,
) -> None:
    # Given a committed job whose API died before publishing it
    [(row, _)] = await submits.insert([new_job()])
    assert (await scheduler.tick())["republished"] == 0  # not yet: the API may still publish it
    await asyncio.sleep(settings.republish_after_seconds + 0.2)
    # When the scheduler ticks, then it publishes it once, and a worker runs it
    assert (await scheduler.tick())["republished"] == 1
    assert (await scheduler.tick())["republished"] == 0
    await start_worker()
    assert (await final(store, row.id, JobStatus.SUCCEEDED)).attempts == 1


async def test_tickets_lost_from_a_purged_queue_are_published_again(
    store: JobStore,
    broker: Broker,
    scheduler: Scheduler,
    start_worker: StartWorker,
    settings: Settings,
) -> None:
    rows = [await submit(store, broker, new_job()) for _ in range(5)]
    await (await broker.channel.get_underlay_channel()).queue_purge(
        broker.topology.queue_name("default")
    )
    assert await ready(broker) == 0
    await asyncio.sleep(settings.lost_ticket_after_seconds + 0.2)
    assert (await scheduler.tick())["lost"] == 5
    assert await ready(broker) == 5
    await start_worker()
    for row in rows:
        await final(store, row.id, JobStatus.SUCCEEDED)


async def test_a_long_healthy_backlog_is_not_flooded_with_duplicates(
    store: JobStore, broker: Broker, scheduler: Scheduler, settings: Settings
) -> None:
    for _ in range(20):
        await submit(store, broker, new_job())
    await asyncio.sleep(settings.lost_ticket_after_seconds + 0.2)
    moved = await scheduler.tick()
    assert (moved["lost"], moved["republished"]) == (0, 0)
    assert await ready(broker) == 20


async def test_a_deleted_queue_is_declared_again_and_its_jobs_republished(
    store: JobStore,
    broker: Broker,
    scheduler: Scheduler,
    start_worker: StartWorker,
    settings: Settings,
) -> None:
    row = await submit(store, broker, new_job(queue="other"))
    await broker.channel.queue_delete(broker.topology.queue_name("other"))
    await asyncio.sleep(settings.lost_ticket_after_seconds + 0.2)
    assert (await scheduler.tick())["lost"] == 1
    await start_worker(worker_queues="other")
    await final(store, row.id, JobStatus.SUCCEEDED)


async def test_two_schedulers_never_publish_a_due_job_twice(
    engine: AsyncEngine,
    settings: Settings,
    store: JobStore,
    submits: SubmitStore,
    broker: Broker,
    tracer_provider: TracerProvider,
) -> None:
    rows = await submits.insert([new_job(delay_seconds=0.3) for _ in range(300)])
    assert {r.status for r, _ in rows} == {JobStatus.SCHEDULED}
    brokers = [Broker(settings, f"jobq-test-scheduler-{i}") for i in range(2)]
    for b in brokers:
        await b.connect()
    small = replace(settings, scheduler_batch_size=50)
    schedulers = [
        Scheduler(
            small,
            SweepStore(engine),
            Outbox(TicketStore(engine), b, mark_delay=0),
            b,
            tracer_provider.get_tracer("s"),
        )
        for b in brokers
    ]
    await asyncio.sleep(0.4)
    try:
        moved = await asyncio.gather(*(s.tick() for s in schedulers))
    finally:
        for b in brokers:
            await b.close()
    assert sum(m["promoted"] for m in moved) == 300
    assert await ready(broker) == 300


async def test_the_scheduler_survives_a_missing_queue_probe(broker: Broker) -> None:
    with pytest.raises(aiormq.exceptions.ChannelNotFoundEntity):
        await broker.queue_state("never-declared")
    await wait_for(lambda: not broker.channel.is_closed)


async def test_a_retry_claims_the_span_of_the_attempt_it_retries_and_an_expiry_forgets_it(
    engine: AsyncEngine, submits: SubmitStore, leases: LeaseStore, settings: Settings
) -> None:
    span = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    sweeps = SweepStore(engine)
    [(row, _)] = await submits.insert([new_job(tracestate="rojo=00f067aa0ba902b7")])
    [first], _ = await leases.claim([row.id], 30)
    assert (first.tracestate, first.attempt_span) == ("rojo=00f067aa0ba902b7", None)
    error = {"type": "RuntimeError", "message": "boom"}
    await leases.fail(first, JobStatus.RETRYING, 0, error, span)
    [ticket] = await sweeps.promote_due(10)
    assert ticket.tracestate == "rojo=00f067aa0ba902b7"
    [second], _ = await leases.claim([row.id], 30)
    assert second.attempt_span == span
    async with engine.begin() as conn:
        await conn.execute(
            sa.text("UPDATE jobs SET lease_expires_at = now() - interval '1 s' WHERE id = :id"),
            {"id": row.id},
        )
    assert len((await sweeps.expire_leases(10))[0]) == 1
    [third], _ = await leases.claim([row.id], 30)
    assert third.attempts == 3
    assert third.attempt_span is None
