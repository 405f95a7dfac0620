"""Workers against real PostgreSQL and RabbitMQ: retries, dead letters, duplicates, fencing."""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import replace

import aio_pika
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from services.scheduler.loop import Scheduler
from shared.config import Settings
from shared.db.jobs import JobStore
from shared.db.leases import Failure, LeaseStore
from shared.db.records import JobRecord
from shared.db.sql import JobRow
from shared.db.submits import NewJob, SubmitStore
from shared.db.sweeps import SweepStore
from shared.db.tickets import TicketStore
from shared.domain import JobStatus
from shared.ids import uuid7
from shared.messaging import Broker, Ticket
from tests.integration import handlers
from tests.integration.conftest import StartWorker, ticking, wait_for

pytestmark = pytest.mark.integration


def new_job(type: str = "noop", payload: object = None, **kw: object) -> NewJob:
    fields: dict[str, object] = {
        "id": uuid7(), "tenant": "acme", "type": type, "queue": "default",
        "payload_json": json.dumps(payload), "priority": 5, "max_attempts": 3,
        "timeout_seconds": 60, "delay_seconds": 0.0, "run_at": None, "idempotency_key": None,
        "retry_backoff_seconds": None, "retry_backoff_max_seconds": None, "traceparent": None,
    }  # fmt: skip
    fields.update(kw)
    return NewJob(**fields)  # type: ignore[arg-type]


async def submit(store: JobStore, broker: Broker, job: NewJob) -> JobRecord:
    [(row, _)] = await SubmitStore(store.engine).insert([job])
    await broker.publish(ticket(row))
    await TicketStore(store.engine).mark_published([ticket(row)])
    return row


def ticket(row: JobRow | JobRecord) -> Ticket:
    return Ticket(row.id, row.type, row.attempts, row.queue, row.priority)


async def final(
    store: JobStore, job_id: uuid.UUID, status: JobStatus, within: float = 15
) -> JobRow:
    async def reached() -> JobRow | None:
        job = await store.get("acme", job_id)
        return job if job is not None and job.status == status else None

    result: JobRow = await wait_for(reached, within)
    return result


async def dead_letters(broker: Broker, expected: int) -> list[aio_pika.abc.AbstractIncomingMessage]:
    ch = await broker.connection.channel()  # type: ignore[union-attr]
    q = await ch.get_queue(broker.topology.dead_queue, ensure=False)
    got: list[aio_pika.abc.AbstractIncomingMessage] = []

    async def drain() -> bool:
        while (m := await q.get(no_ack=True, fail=False)) is not None:
            got.append(m)
        return len(got) >= expected

    await wait_for(drain)
    await ch.close()
    return got


async def test_a_failing_job_is_retried_with_backoff_then_dead_and_dead_lettered(
    store: JobStore, broker: Broker, start_worker: StartWorker, scheduler: Scheduler
) -> None:
    await start_worker()
    async with ticking(scheduler):
        job = await submit(store, broker, new_job("fail", {"message": "boom"}, max_attempts=3))
        dead = await final(store, job.id, JobStatus.DEAD)
    assert dead.attempts == 3
    assert len(dead.errors) == 3
    assert dead.last_error["message"] == "boom"
    assert dead.last_error["type"] == "HandlerError"
    assert [e["attempt"] for e in dead.errors] == [1, 2, 3]
    [letter] = await dead_letters(broker, 1)
    assert letter.message_id == str(job.id)
    assert "boom" in str(letter.headers["x-jobq-reason"])
    assert json.loads(letter.body)["job_id"] == str(job.id)


async def test_a_permanent_failure_or_unknown_type_is_dead_at_once(
    store: JobStore, broker: Broker, start_worker: StartWorker
) -> None:
    await start_worker()
    unknown = await submit(store, broker, new_job("no.such.type"))
    invalid = await submit(store, broker, new_job("sleep", {"seconds": "long"}))
    for job_id in (unknown.id, invalid.id):
        job = await final(store, job_id, JobStatus.DEAD)
        assert job.attempts == 1
    assert len(await dead_letters(broker, 2)) == 2


async def test_duplicate_deliveries_complete_once(
    store: JobStore, broker: Broker, start_worker: StartWorker
) -> None:
    running = await start_worker()
    row = await submit(store, broker, new_job("test.record", {"sleep": 0.3}))
    for _ in range(3):
        await broker.publish(ticket(row))
    done = await final(store, row.id, JobStatus.SUCCEEDED)
    await broker.publish(ticket(row))  # a late duplicate after completion
    await wait_for(lambda: running.worker.stats["duplicates"] >= 4)
    assert handlers.executions[row.id] == 1
    assert done.attempts == 1
    assert done.result == {"attempt": 1}


async def test_a_stale_worker_cannot_complete_fail_or_extend_a_reclaimed_job(
    store: JobStore,
    leases: LeaseStore,
    submits: SubmitStore,
    settings: Settings,
    scheduler: Scheduler,
) -> None:
    [(row, _)] = await submits.insert([new_job()])
    [stale], _ = await leases.claim([row.id], lease_seconds=60)
    async with store.engine.begin() as conn:  # the lease runs out (worker paused)
        await conn.execute(sa.text("UPDATE jobs SET lease_expires_at = now() - interval '1 s'"))
    assert await leases.complete([(stale.id, stale.lease_id, '"late"')]) == [False]
    assert (await scheduler.tick())["expired"] == 1
    [current], _ = await leases.claim([row.id], lease_seconds=60)
    assert current.lease_id != stale.lease_id
    assert current.attempts == 2

    assert await leases.heartbeat([(stale.id, stale.lease_id)], 60) == {}
    assert await leases.complete([(stale.id, stale.lease_id, '"late"')]) == [False]
    assert await leases.fail(stale, JobStatus.DEAD, 0, {"type": "X", "message": "late"}) is None
    assert await leases.complete([(current.id, current.lease_id, '"ok"')]) == [True]
    assert await leases.complete([(current.id, current.lease_id, '"twice"')]) == [False]
    job = await store.get("acme", row.id)
    assert job is not None
    assert job.status == JobStatus.SUCCEEDED
    assert job.result == "ok"


async def test_an_expired_lease_with_no_attempts_left_is_dead(
    store: JobStore, leases: LeaseStore, submits: SubmitStore, broker: Broker, scheduler: Scheduler
) -> None:
    [(row, _)] = await submits.insert([new_job(max_attempts=1)])
    await leases.claim([row.id], lease_seconds=0.1)
    await asyncio.sleep(0.3)
    assert (await scheduler.tick())["expired"] == 1
    job = await store.get("acme", row.id)
    assert job is not None
    assert job.status == JobStatus.DEAD
    assert job.last_error["type"] == "LeaseExpired"
    assert len(await dead_letters(broker, 1)) == 1


async def test_a_timed_out_attempt_is_retried(
    store: JobStore, broker: Broker, start_worker: StartWorker, scheduler: Scheduler
) -> None:
    await start_worker()
    async with ticking(scheduler):
        row = await submit(
            store, broker, new_job("sleep", {"seconds": 5}, timeout_seconds=1, max_attempts=2)
        )
        job = await final(store, row.id, JobStatus.DEAD)
    assert [e["type"] for e in job.errors] == ["TimeoutError", "TimeoutError"]


async def test_undecodable_messages_are_dead_lettered_and_the_worker_carries_on(
    store: JobStore, broker: Broker, start_worker: StartWorker
) -> None:
    running = await start_worker()
    exchange = await broker.channel.get_exchange(broker.topology.jobs_exchange)
    await exchange.publish(aio_pika.Message(b"\xff not json"), routing_key="default")
    ghost = Ticket(uuid.uuid4(), "noop", 0, "default", 5)  # names no job
    await broker.publish(ghost)
    row = await submit(store, broker, new_job())
    await final(store, row.id, JobStatus.SUCCEEDED)
    letters = await dead_letters(broker, 2)
    assert {m.body for m in letters} >= {b"\xff not json"}
    assert running.worker.stats["rejected"] == 2


async def test_graceful_shutdown_releases_unfinished_jobs_without_spending_an_attempt(
    store: JobStore, broker: Broker, start_worker: StartWorker
) -> None:
    first = await start_worker(shutdown_grace_seconds=0.5)
    quick = await submit(store, broker, new_job("sleep", {"seconds": 0.2}))
    slow = await submit(store, broker, new_job("sleep", {"seconds": 3}))
    await wait_for(lambda: first.worker.stats["claimed"] == 2)
    await first.shutdown()
    assert (await final(store, quick.id, JobStatus.SUCCEEDED)).attempts == 1
    released = await store.get("acme", slow.id)
    assert released is not None
    assert released.status == JobStatus.QUEUED
    assert released.attempts == 0
    assert first.worker.stats["released"] == 1
    await start_worker()
    assert (await final(store, slow.id, JobStatus.SUCCEEDED)).attempts == 1


async def started_order(store: JobStore, rows: list[JobRecord]) -> list[int]:
    done = [await final(store, r.id, JobStatus.SUCCEEDED) for r in rows]
    return [j.priority for j in sorted(done, key=lambda j: j.started_at or j.created_at)]


async def test_quorum_queues_run_higher_priority_first_among_buffered_deliveries(
    store: JobStore, broker: Broker, start_worker: StartWorker
) -> None:
    # Given two long jobs holding both slots, and two more buffered by the worker meanwhile
    for seconds in (1, 3):
        await submit(store, broker, new_job("sleep", {"seconds": seconds}))
    running = await start_worker(worker_concurrency=2)
    await wait_for(lambda: running.worker.stats["claimed"] == 2)
    low = await submit(store, broker, new_job(priority=1))
    high = await submit(store, broker, new_job(priority=9))
    # Then the higher priority starts first when one slot frees up
    assert (await started_order(store, [low, high])) == [9, 1]


async def test_classic_queues_let_the_broker_order_by_priority(
    engine: AsyncEngine, settings: Settings, start_worker: StartWorker, clean: None
) -> None:
    classic = replace(settings, queue_type="classic", broker_prefix=settings.broker_prefix + "c")
    store, broker = JobStore(engine), Broker(classic, "jobq-test-classic")
    await broker.connect()
    try:
        rows = [await submit(store, broker, new_job(priority=p)) for p in (1, 9, 5)]
        await start_worker(
            queue_type="classic", broker_prefix=classic.broker_prefix, worker_concurrency=1
        )
        assert await started_order(store, rows) == [9, 5, 1]
    finally:
        ch = broker.channel
        await ch.queue_delete(broker.topology.queue_name("default"))
        await ch.queue_delete(broker.topology.dead_queue)
        await ch.exchange_delete(broker.topology.jobs_exchange)
        await ch.exchange_delete(broker.topology.dlx)
        await broker.close()


async def test_a_cancel_request_holds_when_the_attempt_ends_without_its_heartbeat(
    store: JobStore, leases: LeaseStore, submits: SubmitStore, scheduler: Scheduler
) -> None:
    # Given two running jobs whose cancel was requested
    rows = [row for row, _ in await submits.insert([new_job(), new_job()])]
    crashed, failed = (await leases.claim([r.id for r in rows], lease_seconds=0.2))[0]
    for job in (crashed, failed):
        before, _ = await store.cancel("acme", job.id)
        assert before == JobStatus.RUNNING
    # When one attempt fails (retryable) and the other's worker vanishes
    error = {"type": "X", "message": "m"}
    assert await leases.fail(failed, JobStatus.RETRYING, 0, error) == Failure(JobStatus.CANCELED)
    await asyncio.sleep(0.3)
    assert (await scheduler.tick())["expired"] == 0  # nothing to publish
    # Then both end canceled instead of running again
    for job in (crashed, failed):
        row = await store.get("acme", job.id)
        assert row is not None
        assert row.status == JobStatus.CANCELED
        assert row.finished_at is not None


async def test_a_retried_claim_whose_reply_was_lost_does_not_spend_another_attempt(
    store: JobStore,
    leases: LeaseStore,
    submits: SubmitStore,
) -> None:
    [(row, _)] = await submits.insert([new_job()])
    lease = uuid.uuid4()
    [first], _ = await leases.claim([row.id], 30, [lease])
    # The reply was lost; the worker retries with a fresh lease id, naming the one it tried
    [again], _ = await leases.claim([row.id], 30, [uuid.uuid4()], tried=[lease])
    assert (first.attempts, again.attempts) == (1, 1)
    assert again.lease_id == lease
    # Another worker's duplicate ticket cannot take it
    claimed, others = await leases.claim([row.id], 30, [uuid.uuid4()])
    assert claimed == []
    assert others == {row.id}


async def test_a_retried_claim_never_reuses_a_lease_id_for_a_new_attempt(
    store: JobStore,
    leases: LeaseStore,
    submits: SubmitStore,
) -> None:
    [(row, _)] = await submits.insert([new_job()])
    lease = uuid.uuid4()
    await leases.claim([row.id], 0.1, [lease])  # committed, reply lost
    await asyncio.sleep(0.3)
    await SweepStore(store.engine).expire_leases(10)  # the lease ran out; the job is queued again
    fresh = uuid.uuid4()
    [claimed], _ = await leases.claim([row.id], 30, [fresh], tried=[lease])
    assert (claimed.attempts, claimed.lease_id) == (2, fresh)


async def test_a_job_reclaimed_by_the_worker_still_running_its_expired_attempt_completes_once(
    store: JobStore,
    broker: Broker,
    start_worker: StartWorker,
    scheduler: Scheduler,
    engine: AsyncEngine,
) -> None:
    """The old attempt's end must not take the new attempt's slot (and its heartbeats)."""
    await start_worker(worker_concurrency=2)
    job = await submit(store, broker, new_job("test.record", {"sleep": 1.5}))
    await wait_for(lambda: handlers.executions[job.id] == 1)
    async with engine.begin() as conn:  # the lease runs out while the handler still runs
        await conn.execute(
            sa.text("UPDATE jobs SET lease_expires_at = now() - interval '1 s' WHERE id = :id"),
            {"id": job.id},
        )
    await scheduler.tick()  # re-queued and published: the same worker claims it again
    await wait_for(lambda: handlers.executions[job.id] == 2)
    done = await final(store, job.id, JobStatus.SUCCEEDED)
    assert done.attempts == 2
    await asyncio.sleep(4)  # past a whole lease: the second attempt's lease was renewed
    row = await store.get("acme", job.id)
    assert row is not None
    assert (row.status, row.attempts) == (JobStatus.SUCCEEDED, 2)
    assert handlers.executions[job.id] == 2
