"""Each test breaks something real while the system works, waits for it to go quiet, and
asserts the guarantees of docs/design.md §3 with ``tests.chaos.checker`` (figures in the summary)."""

from __future__ import annotations

import asyncio
import signal
import uuid
from datetime import datetime

import aio_pika
import pytest

from tests import audit
from tests.chaos import faults
from tests.chaos.cluster import HTTP_LEASE_SECONDS
from tests.chaos.harness import Chaos
from tests.chaos.workload import Spec, dependents, jobs

pytestmark = pytest.mark.chaos


def now() -> float:
    return asyncio.get_running_loop().time()


async def kill_busiest_workers(chaos: Chaos, times: int) -> list[tuple[datetime, set[uuid.UUID]]]:
    """Every second, kill -9 the worker running the most jobs and start another; returns when
    each kill struck and the leases it cut."""
    kills = []
    for _ in range(times):
        await asyncio.sleep(1.0)
        workers = chaos.cluster.of("worker")
        running = {p.pid: await chaos.in_flight(p.pid) for p in workers}
        victim = max(workers, key=lambda p: len(running[p.pid]))
        kills.append((faults.utcnow(), running[victim.pid]))
        chaos.cluster.signal(victim, signal.SIGKILL)
        await chaos.cluster.start("worker")
    return kills


async def test_worker_kill_9_mid_job_repeatedly(chaos: Chaos) -> None:
    await chaos.up(workers=2)
    load = asyncio.create_task(chaos.load.run(jobs(240, ms=(50, 400)), rate=60))
    kills = await kill_busiest_workers(chaos, 4)
    await load
    ended = now()
    await chaos.quiet()
    hit = sum(len(leases) for _, leases in kills)
    orphaned = max([await chaos.orphan_seconds(at, leases) for at, leases in kills])
    f = await chaos.finish(
        "worker kill -9 x4", ended, in_flight_at_kills=hit, max_orphan_s=orphaned
    )
    assert hit > 0, "the kills hit no running job"
    assert f.duplicate_executions <= hit


async def test_dependency_chains_under_worker_kill_9(chaos: Chaos) -> None:
    """Three layers of jobs waiting for jobs (docs/design.md §2.1), the later layers submitted
    while the earlier run, and workers killed throughout: every job ends as its own flags and
    its dependencies' outcomes say (a failed dependency cancels, or not, by policy), none
    starts before what it waits for has finished, and each effect happens once."""
    await chaos.up(workers=2)
    roots = jobs(90, ms=(100, 400), seed=5, fail_always_every=15)
    killing = asyncio.create_task(kill_busiest_workers(chaos, 3))
    await chaos.load.run(roots, rate=60)
    middle = dependents(roots, chaos.load.accepted, 60, seed=6)
    await chaos.load.run(middle)
    await chaos.load.run(dependents(middle, chaos.load.accepted, 30, seed=7))
    kills = await killing
    ended = now()
    await chaos.quiet()
    hit = sum(len(leases) for _, leases in kills)
    waited = await chaos.fetchval(
        "SELECT count(DISTINCT job_id) FROM jobq_audit WHERE to_status = 'waiting'"
    )
    f = await chaos.finish(
        "dependency chains, worker kill -9 x3", ended, in_flight_at_kills=hit, waited=waited
    )
    assert f.duplicate_executions <= hit
    assert isinstance(waited, int)
    assert waited > 30, "hardly any job had to wait"
    assert f.statuses["canceled"] > 0, "no failed dependency canceled its dependent"


async def test_concurrency_limits_hold_while_schedulers_and_workers_are_killed(
    chaos: Chaos,
) -> None:
    """Jobs of five concurrency keys (two at a time each, docs/design.md §2.2) while two
    schedulers (whose dispatchers release them) and the workers are killed with kill -9: no
    tenant's key ever has more than two jobs running, by the audit trail, and nothing is
    lost."""
    await chaos.up(workers=2, schedulers=2)
    specs = [
        Spec(s.key, s.tenant, {**s.body, "concurrency_key": f"k{i % 5}", "concurrency_limit": 2})
        for i, s in enumerate(jobs(150, ms=(100, 300), seed=11))
    ]
    load = asyncio.create_task(chaos.load.run(specs, rate=50))
    for victim in ("scheduler", "worker", "scheduler", "worker"):
        await asyncio.sleep(0.8)
        chaos.cluster.signal(chaos.cluster.of(victim)[0], signal.SIGKILL)
        await chaos.cluster.start(victim)
    await load
    ended = now()
    await chaos.quiet()
    async with chaos.connection() as conn:
        moves = await audit.history(conn)
        keys = dict(await conn.fetch("SELECT id, tenant || '/' || concurrency_key FROM jobs"))
    peak = max(audit.most_running_at_once(moves, keys).values())
    f = await chaos.finish(
        "concurrency keys, scheduler and worker kill -9 x2 each", ended, most_running_per_key=peak
    )
    assert peak == 2, f"a key ran {peak} jobs at once; its limit is 2"
    assert f.lost == 0


async def test_http_worker_killed_and_frozen_mid_job(chaos: Chaos) -> None:
    """An HTTP worker (``jobq-http-worker``, the SDK) takes one tenant's jobs beside an AMQP
    worker on one queue; it is killed twice and frozen past its lease once. The killed one's
    jobs come back when their leases run out; the frozen one's late writes are refused."""
    await chaos.http_workers_for("acme")
    chaos.cluster.overrides["JOBQ_WORKER_CONCURRENCY"] = "2"  # leave acme's jobs to share
    await chaos.up(workers=1)
    await chaos.cluster.start("httpworker")
    load = asyncio.create_task(chaos.load.run(jobs(180, ms=(200, 600)), rate=40))
    hits: list[tuple[datetime, set[uuid.UUID]]] = []
    for fault in (signal.SIGKILL, signal.SIGSTOP, signal.SIGKILL):
        await asyncio.sleep(1.0)
        [victim] = chaos.cluster.of("httpworker")

        async def holding(pid: int = victim.pid) -> set[uuid.UUID]:
            return await chaos.in_flight(pid)

        held = await chaos.until(bool, holding, within=10)
        hits.append((faults.utcnow(), held))
        chaos.cluster.signal(victim, fault)
        if fault == signal.SIGSTOP:
            await asyncio.sleep(HTTP_LEASE_SECONDS + 2)  # its leases run out; others rerun
            chaos.cluster.signal(victim, signal.SIGCONT)
            await asyncio.sleep(2)  # its next heartbeat is refused: it stops those handlers
            chaos.cluster.signal(victim, signal.SIGTERM)
        await chaos.cluster.start("httpworker")
    await load
    ended = now()
    await chaos.quiet()
    hit = sum(len(leases) for _, leases in hits)
    orphaned = max([await chaos.orphan_seconds(at, leases) for at, leases in hits])
    by_http = await chaos.fetchval(
        "SELECT count(DISTINCT job_id) FROM chaos_executions WHERE pid = ANY($1)",
        [p.pid for p in chaos.cluster.procs if p.name.startswith("httpworker")],
    )
    f = await chaos.finish(
        "http worker kill -9 x2, SIGSTOP past lease x1", ended, in_flight_at_faults=hit,
        max_orphan_s=orphaned, jobs_run_over_http=by_http,
    )  # fmt: skip
    assert f.duplicate_executions <= hit
    assert f.stale_effects == 0
    assert isinstance(by_http, int)
    assert by_http > 10, "the HTTP workers took hardly any job"


async def test_worker_sigterm_drains_without_duplicates(chaos: Chaos) -> None:
    await chaos.up(workers=2)
    load = asyncio.create_task(chaos.load.run(jobs(160, ms=(50, 300)), rate=50))
    exits = []
    for _ in range(2):
        await asyncio.sleep(1.0)
        old = chaos.cluster.of("worker")[0]
        await chaos.cluster.start("worker")
        t0 = now()
        chaos.cluster.signal(old, signal.SIGTERM)
        code = await asyncio.to_thread(old.popen.wait, 30)
        exits.append((code, round(now() - t0, 2)))
    await load
    f = await chaos.finish("worker SIGTERM x2", now(), exits=exits)
    assert [code for code, _ in exits] == [0, 0], exits
    assert f.duplicate_executions == 0
    assert f.extra["lease_lost"] == 0


async def test_worker_frozen_past_its_lease_has_its_late_writes_refused(chaos: Chaos) -> None:
    await chaos.up(workers=2)
    load = asyncio.create_task(chaos.load.run(jobs(60, ms=(400, 1200)), rate=30))
    await asyncio.sleep(1.5)
    workers = chaos.cluster.of("worker")
    running = {p.pid: await chaos.in_flight(p.pid) for p in workers}
    victim = max(workers, key=lambda p: len(running[p.pid]))
    frozen_at = faults.utcnow()
    chaos.cluster.signal(victim, signal.SIGSTOP)
    await asyncio.sleep(5.0)  # 2.5 leases: the scheduler expires them, another worker reruns
    chaos.cluster.signal(victim, signal.SIGCONT)
    ended = now()
    await load
    await chaos.quiet()
    assert victim.alive(), "the worker did not survive its freeze"
    f = await chaos.finish(
        "worker SIGSTOP 5s (lease 2s)", ended, frozen_in_flight=len(running[victim.pid]),
        max_orphan_s=await chaos.orphan_seconds(frozen_at, running[victim.pid]),
    )  # fmt: skip
    assert running[victim.pid], "the frozen worker ran nothing"
    # Every late write of the frozen worker was refused or never attempted (heartbeat first).
    assert f.stale_effects == 0


async def test_api_killed_between_commit_and_publish(chaos: Chaos) -> None:
    await chaos.up(workers=2)
    load = asyncio.create_task(chaos.load.run(jobs(150), rate=40))
    await asyncio.sleep(1.0)
    async with faults.publishers_blocked():
        await asyncio.sleep(2.5)  # requests commit, then wait for confirms that cannot come
        unpublished = await chaos.fetchval(
            "SELECT count(*) FROM jobs WHERE status = 'queued' AND published_at IS NULL"
        )
        chaos.cluster.signal(chaos.cluster.of("api")[0], signal.SIGKILL)
        await chaos.cluster.start("api")
    ended = now()
    await load
    f = await chaos.finish("api kill -9 after commit", ended, committed_unpublished=unpublished)
    assert isinstance(unpublished, int)
    assert unpublished > 0, "the kill hit no job between commit and publish"
    assert f.key_duplicates == 0


async def test_rabbitmq_restarted_during_submits_and_processing(chaos: Chaos) -> None:
    await chaos.up(workers=2)
    load = asyncio.create_task(chaos.load.run(jobs(240), rate=60))
    await asyncio.sleep(1.5)
    async with faults.rabbit_stopped():
        await asyncio.sleep(3.0)
    ended = now()
    await load
    f = await chaos.finish("rabbitmq stop_app 3s", ended)
    assert f.duplicate_executions == 0


async def test_all_broker_connections_force_closed(chaos: Chaos) -> None:
    await chaos.up(workers=2)
    load = asyncio.create_task(chaos.load.run(jobs(200), rate=60))
    for _ in range(3):
        await asyncio.sleep(1.0)
        await faults.rabbitmqctl("close_all_connections", "chaos test")
    ended = now()
    await load
    f = await chaos.finish("close_all_connections x3", ended)
    assert f.duplicate_executions == 0


async def test_purged_queue_loses_no_job(chaos: Chaos) -> None:
    chaos.cluster.overrides["JOBQ_WORKER_CONCURRENCY"] = "2"
    await chaos.up(workers=1)
    await chaos.load.run(jobs(150, ms=(30, 60)))
    await faults.rabbitmqctl("purge_queue", f"{chaos.cluster.prefix}.q.default")
    ended = now()
    f = await chaos.finish("purge_queue with backlog", ended)
    assert f.duplicate_executions == 0


async def test_postgres_crash_gets_503s_and_paused_workers(chaos: Chaos) -> None:
    await chaos.up(workers=2)
    load = asyncio.create_task(chaos.load.run(jobs(200), rate=40))
    await asyncio.sleep(1.5)
    down = faults.utcnow()
    async with faults.postgres_down():
        await asyncio.sleep(4.0)
        restarting = faults.utcnow()  # no claim can commit in between
    up = now()
    await load
    # Every lease ran out during the outage (2 s lease, 4 s down): those jobs may run again.
    held = await chaos.excuse_leases_held(down, restarting)
    f = await chaos.finish("postgres stop -m immediate 4s", up, leases_across_outage=held)
    assert f.http[503] > 0, "the API never saw the outage"
    dead_letters = await chaos.dead_letters()
    # Only jobq's own dead-letter tickets, one job each (a ticket whose confirm could not be
    # recorded during the outage is sent again: a duplicate, like any ticket), never a
    # delivery a worker rejected because PostgreSQL was down.
    rejected = [m for m in dead_letters if "x-jobq-reason" not in (m.headers or {})]
    assert not rejected, "deliveries were dead-lettered by the outage"
    assert len({m.message_id for m in dead_letters}) == f.statuses["dead"]


async def test_postgres_connections_terminated(chaos: Chaos) -> None:
    await chaos.up(workers=2)
    load = asyncio.create_task(chaos.load.run(jobs(200), rate=40))
    cut = 0
    for _ in range(10):
        await asyncio.sleep(0.5)
        cut += await faults.terminate_backends(chaos.admin_dsn, chaos.database)
    ended = now()
    await load
    f = await chaos.finish("pg_terminate_backend x10", ended, connections_cut=cut)
    assert cut > 0
    assert f.duplicate_executions == 0


async def test_poison_is_contained(chaos: Chaos) -> None:
    """Undecodable messages go to the dead-letter queue; a job that kills its worker on every
    attempt ends dead after its attempts; healthy jobs keep flowing meanwhile."""
    await chaos.up(workers=2)
    garbage = [b"not json", b"\xff\xfe", b'{"job_id": "nope"}', b"[]", b""]
    conn = await aio_pika.connect(chaos.cluster.amqp_url)
    async with conn:
        ch = await conn.channel()
        for body in garbage:
            await ch.default_exchange.publish(
                aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=f"{chaos.cluster.prefix}.q.default",
            )
    specs = jobs(120, kill=[10])
    specs[10].body["max_attempts"] = 3
    await chaos.load.run(specs, rate=40)
    killer = chaos.load.accepted[specs[10].key]
    ended = now()
    await chaos.quiet()
    dead_letters = await chaos.dead_letters()
    f = await chaos.finish(
        "poison: 5 undecodable + 1 worker-killing job", ended,
        worker_crashes=len(chaos.cluster.crashed), dead_letters=len(dead_letters),
    )  # fmt: skip
    attempts = await chaos.fetchval("SELECT attempts FROM jobs WHERE id = $1", killer)
    assert attempts == 3
    assert len(chaos.cluster.crashed) == 3
    jobq = [m for m in dead_letters if "x-jobq-reason" in (m.headers or {})]
    raw = [m for m in dead_letters if m not in jobq]
    assert sorted(m.body for m in raw) == sorted(garbage)
    tickets = {m.message_id for m in jobq}
    assert len(tickets) == f.statuses["dead"]
    assert str(killer) in tickets


async def test_two_schedulers_one_killed(chaos: Chaos) -> None:
    await chaos.up(workers=2, schedulers=2)
    load = asyncio.create_task(chaos.load.run(jobs(200, delay_every=3), rate=50))
    await asyncio.sleep(2.0)
    victim = chaos.cluster.of("scheduler")[0]
    chaos.cluster.signal(victim, signal.SIGKILL)
    ended = now()
    await load
    f = await chaos.finish("two schedulers, one kill -9", ended)
    # Every promotion and retry happened once per attempt (the audit's legal paths), and no
    # job was published twice: no worker saw a duplicate ticket.
    assert f.duplicate_executions == 0
    assert f.extra["duplicate_tickets"] == 0


async def test_job_longer_than_consumer_timeout_completes_once(chaos: Chaos) -> None:
    """RabbitMQ closes a channel holding a delivery unacked past consumer_timeout (here 2 s,
    checked every second). Workers ack at claim and hand back deliveries that wait too long
    in their buffer, so 6 s jobs and the jobs queued behind them never trip it."""
    chaos.cluster.overrides |= {
        "JOBQ_WORKER_CONCURRENCY": "2",
        "JOBQ_HANDBACK_AFTER_SECONDS": "1",
    }
    async with (
        faults.rabbit_setting("consumer_timeout", 2000),
        faults.rabbit_setting("channel_tick_interval", 1000),
    ):
        await chaos.up(workers=1)
        control = await faults.unacked_consumer(chaos.cluster.amqp_url, chaos.cluster.prefix)
        specs = jobs(8, ms=(100, 200), fail_always_every=0, fail_once_every=0)
        for spec in specs[:2]:
            spec.body["payload"]["ms"] = 6000
        await chaos.load.run(specs[:2])  # both slots busy for 6 s ...
        await chaos.until(lambda running: len(running) == 2, chaos.in_flight)
        await chaos.load.run(specs[2:])  # ... so these wait in the worker's buffer
        ended = now()
        await chaos.quiet()
        closed = await control.closed_within(5)
        await control.close()
    f = await chaos.finish("6s jobs, consumer_timeout 2s", ended, control_channel_closed=closed)
    logs = "\n".join(p.log.read_text() for p in chaos.cluster.procs)
    assert closed, "the broker did not enforce consumer_timeout: the test proves nothing"
    assert "PRECONDITION_FAILED" not in logs
    assert f.duplicate_executions == 0
    assert f.extra["handed_back"] > 0, "no delivery waited long enough to be handed back"
