"""A Hypothesis state machine over the job store on a real PostgreSQL.

It proves that, whatever the order of submits, deliveries (duplicates included), claims (and
claims retried after a lost reply), heartbeats, completions, failures and releases with held
or stale leases, scheduler ticks, cancels, API retries, lost tickets and clock advances:

- every unfinished job stays recoverable: after every step each one has a way forward (a due
  time, a ticket in flight or a publish the scheduler will redo, a lease that will expire),
  and at the end of every example advancing the clock, ticking and working off every ticket
  drives every job to a terminal state;
- no terminal state is written twice: each job's audit trail (``tests.audit``) holds one
  terminal move per API retry plus one if it is finished now, every move is legal, every claim
  takes a fresh lease, and a finished row never changes until an API retry reopens it;
- a write naming a stale lease (superseded, or expired) is refused and changes nothing;
- an idempotency key names one job per tenant.

RabbitMQ is modelled in memory (``MemoryBroker``): each publish is confirmed, sent without a
confirm, or lost, as Hypothesis draws; the real ``Scheduler.tick`` runs against it. Time is
simulated without touching the product: the store reads PostgreSQL's ``now()``, so advancing
the clock shifts every timestamp of ``jobs`` into the past. Every interval, delay and shift is
a multiple of ``U`` seconds, so comparisons with ``now()`` are decided by the simulated time,
never by the few milliseconds an example really takes.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, ClassVar, Literal, TypeAlias, TypeVar

import asyncpg
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from opentelemetry.trace import NoOpTracer

from services.scheduler.loop import Scheduler
from shared.config import Settings
from shared.db.engine import make_engine
from shared.db.jobs import JobStore
from shared.db.leases import Claimed, LeaseStore
from shared.db.queues import QueueStore
from shared.db.submits import NewJob, SubmitStore
from shared.db.sweeps import SweepStore
from shared.db.tickets import TicketStore, ticket_of
from shared.domain import CANCELABLE, RETRYABLE_BY_API, TERMINAL, JobStatus, decide_failure
from shared.ids import uuid7
from shared.messaging import Broker, Ticket
from shared.outbox import Outbox
from tests import audit
from tests.services import create_database, database_server, drop_database

pytestmark = pytest.mark.integration

T = TypeVar("T")
Row: TypeAlias = asyncpg.Record
Fate = Literal["confirmed", "unconfirmed", "lost"]

#: The unit of simulated time, in seconds: far longer than an example really runs.
U = 10
WORKERS = ("w1", "w2", "w3")
TENANTS = ("acme", "globex")
QUEUES = ("default", "other")
FATES: st.SearchStrategy[Fate] = st.sampled_from(["confirmed", "unconfirmed", "lost"])
TIMESTAMPS = (
    "run_at",
    "lease_expires_at",
    "dispatched_at",
    "published_at",
    "created_at",
    "updated_at",
    "started_at",
    "finished_at",
)
ADVANCE = ", ".join(f"{c} = {c} - make_interval(secs => $1)" for c in TIMESTAMPS)


@dataclass(frozen=True)
class Postgres:
    """A private event loop (Hypothesis drives the machine synchronously), the store on a
    database of its own, and a connection for the test's reads, clock shifts and audit."""

    loop: asyncio.AbstractEventLoop
    conn: Any  # asyncpg.Connection
    store: JobStore
    submits: SubmitStore
    leases: LeaseStore
    sweeps: SweepStore
    tickets: TicketStore
    settings: Settings

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)


@pytest.fixture(scope="module")
def pg() -> Iterator[Postgres]:
    """A fresh migrated database with the audit trigger, dropped at the end."""
    with database_server() as server, contextlib.ExitStack() as stack:
        loop = asyncio.new_event_loop()
        stack.callback(loop.close)
        run = loop.run_until_complete
        url = run(create_database(server, "jobq_prop"))
        stack.callback(lambda: run(drop_database(url)))
        s = Settings(
            database_url=url,
            lease_seconds=2 * U,
            republish_after_seconds=U,
            lost_ticket_after_seconds=2 * U,
            retry_backoff_seconds=U,
            retry_backoff_max_seconds=2 * U,
            # Small enough that ticks take several batches, large enough that one tick's
            # 20 batches cover every job an example can submit (3 per step).
            scheduler_batch_size=8,
        )
        conn = run(asyncpg.connect(s.sync_database_url))
        stack.callback(lambda: run(conn.close()))
        run(audit.install(conn))
        engine = make_engine(s, "property", pool_size=2)
        stack.callback(lambda: run(engine.dispose()))
        run(QueueStore(engine).declare(QUEUES))
        yield Postgres(
            loop,
            conn,
            JobStore(engine),
            SubmitStore(engine),
            LeaseStore(engine),
            SweepStore(engine),
            TicketStore(engine),
            s,
        )


class MemoryBroker(Broker):
    """RabbitMQ as far as the store can tell: the tickets ready in the job queues, in a list.

    Each ticket published meets the fate ``fate()`` draws: confirmed, sent but never
    confirmed, or lost before the broker took it. Dead letters go nowhere a worker reads.
    Tickets are kept in job submission order so that Hypothesis replays choose the same ones.
    """

    def __init__(self, settings: Settings, rank: dict[uuid.UUID, int]) -> None:
        super().__init__(settings, "property")
        self.ready: list[Ticket] = []
        self.rank = rank
        self.fate: Callable[[], Fate] = lambda: "confirmed"

    def _order(self, t: Ticket) -> tuple[int, int]:
        return self.rank[t.job_id], t.attempt

    async def publish_many(self, tickets: list[Ticket], why: str | None = None) -> list[Ticket]:
        confirmed = []
        for t in sorted(tickets, key=self._order):
            fate = self.fate()
            if fate != "lost" and not t.dead:
                self.ready.append(t)
            if fate == "confirmed":
                confirmed.append(t)
        self.ready.sort(key=self._order)
        return confirmed

    async def queue_state(self, queue: str) -> tuple[int, int]:
        return sum(t.queue == queue for t in self.ready), 0


@dataclass(frozen=True)
class Spec:
    """One job of a submit."""

    tenant: str
    queue: str
    delay: int
    key: str | None
    max_attempts: int

    def new_job(self) -> NewJob:
        return NewJob(
            id=uuid7(),
            tenant=self.tenant,
            type="noop",
            queue=self.queue,
            payload_json="{}",
            priority=5,
            max_attempts=self.max_attempts,
            timeout_seconds=60,
            delay_seconds=float(self.delay),
            run_at=None,
            idempotency_key=self.key,
            retry_backoff_seconds=None,
            retry_backoff_max_seconds=None,
            traceparent=None,
        )


SPECS = st.builds(
    Spec,
    tenant=st.sampled_from(TENANTS),
    queue=st.sampled_from(QUEUES),
    delay=st.sampled_from([0, 0, U, 2 * U]),
    key=st.sampled_from([None, None, "k1", "k2"]),
    max_attempts=st.integers(1, 3),
)
Action = Literal["complete", "fail", "fail_permanent", "heartbeat", "release"]
ACTIONS: st.SearchStrategy[Action] = st.sampled_from(
    ["complete", "fail", "fail_permanent", "heartbeat", "release"]
)


class JobStoreMachine(RuleBasedStateMachine):
    """Workers, an API, a scheduler and a lossy broker around one ``JobStore``."""

    pg: ClassVar[Postgres]

    def __init__(self) -> None:
        super().__init__()
        self.store = self.pg.store
        self.settings = self.pg.settings
        self.pg.run(self.pg.conn.execute("TRUNCATE jobs, job_dependencies, jobq_audit"))
        self.jobs: list[uuid.UUID] = []
        self.rank: dict[uuid.UUID, int] = {}
        self.tenant: dict[uuid.UUID, str] = {}
        self.keys: dict[tuple[str, str], uuid.UUID] = {}
        self.broker = MemoryBroker(self.settings, self.rank)
        outbox = Outbox(self.pg.tickets, self.broker, mark_delay=0)
        self.scheduler = Scheduler(self.settings, self.pg.sweeps, outbox, self.broker, NoOpTracer())
        #: What each worker believes it runs.
        self.held: dict[str, dict[uuid.UUID, Claimed]] = {w: {} for w in WORKERS}
        #: Deliveries whose claim committed but whose reply was lost, as ``(job id, every
        #: lease id tried)``: the worker retries them as ``runner.Worker`` does.
        self.unanswered: dict[str, list[tuple[uuid.UUID, list[uuid.UUID]]]] = {
            w: [] for w in WORKERS
        }
        #: Every claim a worker ever learnt of: the source of stale leases.
        self.claims: list[Claimed] = []
        self.retries: Counter[uuid.UUID] = Counter()
        #: Finished rows as first seen, in simulated time (``offset`` undoes the clock shifts).
        self.final: dict[uuid.UUID, tuple[Any, ...]] = {}
        self.offset = 0

    # -- helpers --------------------------------------------------------------------------

    def row(self, job_id: uuid.UUID) -> Row:
        return self.pg.run(self.pg.conn.fetchrow("SELECT * FROM jobs WHERE id = $1", job_id))

    def rows(self) -> list[Row]:
        return self.pg.run(self.pg.conn.fetch("SELECT * FROM jobs"))

    def fenced(self, claim: Claimed) -> bool:
        """Whether ``claim`` still holds its job: the condition every worker write names."""
        return bool(
            self.pg.run(
                self.pg.conn.fetchval(
                    "SELECT EXISTS (SELECT FROM jobs WHERE id = $1 AND lease_id = $2"
                    " AND status = 'running' AND lease_expires_at > now())",
                    claim.id,
                    claim.lease_id,
                )
            )
        )

    def publish(self, fate: Callable[[], Fate], tickets: list[Ticket]) -> None:
        """Publish as the API and workers do: confirmed tickets are marked published."""
        self.broker.fate = fate
        confirmed = self.pg.run(self.broker.publish_many(tickets))
        self.pg.run(self.pg.tickets.mark_published(confirmed))

    def claim(
        self, asks: list[tuple[uuid.UUID, uuid.UUID]], tried: Sequence[uuid.UUID] = ()
    ) -> list[Claimed]:
        """Claim ``(job id, fresh lease id)`` pairs, naming the lease ids of earlier tries
        whose reply was lost; checks each job's outcome against its row."""
        ids = [job_id for job_id, _ in asks]
        before = {job_id: self.row(job_id) for job_id in ids}
        claimed, others = self.pg.run(
            self.pg.leases.claim(
                ids, self.settings.lease_seconds, [lease for _, lease in asks], tried
            )
        )
        by_id = {c.id: c for c in claimed}
        assert len(by_id) == len(claimed), "a job was claimed twice in one batch"
        for job_id, was in before.items():
            got = by_id.get(job_id)
            if was["status"] == JobStatus.QUEUED:
                assert got is not None, f"queued job {job_id} not claimed"
                assert got.lease_id in {lease for i, lease in asks if i == job_id}
                assert got.attempts == was["attempts"] + 1
            elif was["status"] == JobStatus.RUNNING and was["lease_id"] in tried:
                assert got is not None, f"the retried claim of {job_id} was refused"
                assert (got.lease_id, got.attempts) == (was["lease_id"], was["attempts"])
            else:
                assert got is None, f"{was['status']} job {job_id} claimed"
                assert job_id in others
                assert self.row(job_id) == was, "a refused claim changed the row"
        return claimed

    def hold(self, worker: str, claimed: list[Claimed]) -> None:
        for c in sorted(claimed, key=lambda c: self.rank[c.id]):  # replays see the same order
            self.held[worker][c.id] = c
        self.claims.extend(claimed)

    def drop(self, claim: Claimed) -> None:
        """The worker holding ``claim`` is done with it (finished, or lost its lease)."""
        for held in self.held.values():
            if held.get(claim.id) == claim:
                del held[claim.id]

    def advance(self, seconds: int) -> None:
        self.pg.run(self.pg.conn.execute(f"UPDATE jobs SET {ADVANCE}", float(seconds)))
        self.offset += seconds

    # -- the API --------------------------------------------------------------------------

    @initialize(data=st.data(), specs=st.lists(SPECS, min_size=1, max_size=4))
    def first_jobs(self, data: st.DataObject, specs: list[Spec]) -> None:
        self.insert(data, specs)

    @rule(data=st.data(), specs=st.lists(SPECS, min_size=1, max_size=3))
    def submit(self, data: st.DataObject, specs: list[Spec]) -> None:
        self.insert(data, specs)

    def insert(self, data: st.DataObject, specs: list[Spec]) -> None:
        """Insert a batch, then publish the tickets of the jobs due now."""
        results = self.pg.run(self.pg.submits.insert([s.new_job() for s in specs]))
        for spec, (row, created) in zip(specs, results, strict=True):
            known = self.keys.get((spec.tenant, spec.key)) if spec.key else None
            if known is not None:
                assert not created, "an idempotency key made a second job"
                assert row.id == known
                continue
            assert created
            assert row.status == (JobStatus.SCHEDULED if spec.delay else JobStatus.QUEUED)
            self.rank[row.id] = len(self.jobs)
            self.jobs.append(row.id)
            self.tenant[row.id] = spec.tenant
            if spec.key:
                self.keys[(spec.tenant, spec.key)] = row.id
        due = [ticket_of(r) for r, created in results if created and r.status == JobStatus.QUEUED]
        self.publish(lambda: data.draw(FATES), due)

    @rule(data=st.data(), command=st.sampled_from(["cancel", "retry"]))
    def api_command(self, data: st.DataObject, command: str) -> None:
        """Cancel any job, or retry one (a dead or canceled one, if there is any)."""
        finished = self.pg.run(
            self.pg.conn.fetch("SELECT id FROM jobs WHERE status IN ('dead', 'canceled')")
        )
        retryable = sorted((r["id"] for r in finished), key=self.rank.__getitem__)
        candidates = retryable if command == "retry" and retryable else self.jobs
        job_id = data.draw(st.sampled_from(candidates))
        was = self.row(job_id)
        if command == "cancel":
            self.cancel(job_id, was)
        else:
            self.retry(data, job_id, was)

    def cancel(self, job_id: uuid.UUID, was: Row) -> None:
        status, _ = self.pg.run(self.store.cancel(self.tenant[job_id], job_id))
        now = self.row(job_id)
        assert status == was["status"]
        if was["status"] in CANCELABLE:
            assert now["status"] == JobStatus.CANCELED
        elif was["status"] == JobStatus.RUNNING:
            assert now["status"] == JobStatus.RUNNING
            assert now["cancel_requested"]
            assert now["lease_id"] == was["lease_id"]
        else:
            assert now == was, "cancel rewrote a finished job"

    def retry(self, data: st.DataObject, job_id: uuid.UUID, was: Row) -> None:
        """``POST /v1/jobs/{id}/retry``: dead and canceled jobs start over."""
        _, ticket = self.pg.run(self.store.retry(self.tenant[job_id], job_id))
        if was["status"] not in RETRYABLE_BY_API:
            assert ticket is None
            assert self.row(job_id) == was
            return
        assert ticket is not None
        now = self.row(job_id)
        assert (now["status"], now["attempts"]) == (JobStatus.QUEUED, 0)
        self.retries[job_id] += 1
        self.final.pop(job_id, None)
        self.publish(lambda: data.draw(FATES), [ticket])

    # -- the broker and the clock ---------------------------------------------------------

    @precondition(lambda self: self.broker.ready)
    @rule(
        data=st.data(), worker=st.sampled_from(WORKERS), acked=st.booleans(), answered=st.booleans()
    )
    def deliver(self, data: st.DataObject, worker: str, acked: bool, answered: bool) -> None:
        """Up to three ready tickets reach ``worker``, which claims their jobs with fresh
        leases. Unacked tickets stay ready (delivered again later); an unanswered claim
        committed but its reply was lost."""
        ready = self.broker.ready
        picks = data.draw(
            st.lists(st.integers(0, len(ready) - 1), min_size=1, max_size=3, unique=True)
        )
        asks = [(ready[i].job_id, uuid.uuid4()) for i in picks]
        if acked:
            for i in sorted(picks, reverse=True):
                del ready[i]
        claimed = self.claim(asks)
        if answered:
            self.hold(worker, claimed)
        else:
            self.unanswered[worker].extend((job_id, [lease]) for job_id, lease in asks)

    @precondition(lambda self: any(self.unanswered.values()))
    @rule(data=st.data(), answered=st.booleans())
    def retry_unanswered_claim(self, data: st.DataObject, answered: bool) -> None:
        """The worker claims again with fresh lease ids, naming those it tried; this reply
        may be lost too."""
        worker = data.draw(st.sampled_from([w for w in WORKERS if self.unanswered[w]]))
        pending, self.unanswered[worker] = self.unanswered[worker], []
        asks = [(job_id, uuid.uuid4()) for job_id, _ in pending]
        claimed = self.claim(asks, [lease for _, tried in pending for lease in tried])
        if answered:
            self.hold(worker, claimed)
        else:
            self.unanswered[worker] = [
                (job_id, [*tried, lease])
                for (job_id, tried), (_, lease) in zip(pending, asks, strict=True)
            ]

    @precondition(lambda self: self.broker.ready)
    @rule(data=st.data(), purge=st.booleans())
    def lose_tickets(self, data: st.DataObject, purge: bool) -> None:
        """A purged queue, or one message lost."""
        if purge:
            self.broker.ready.clear()
        else:
            del self.broker.ready[data.draw(st.integers(0, len(self.broker.ready) - 1))]

    @rule(seconds=st.sampled_from([U, 2 * U, 3 * U]))
    def advance_clock(self, seconds: int) -> None:
        self.advance(seconds)

    @rule(data=st.data())
    def tick(self, data: st.DataObject) -> None:
        """One ``Scheduler.tick``; afterwards nothing it should have taken is left behind (with
        a second of slack: the tick read ``now()`` a little earlier than the check does)."""
        self.broker.fate = lambda: data.draw(FATES)
        self.pg.run(self.scheduler.tick())
        empty = [q for q in QUEUES if not any(t.queue == q for t in self.broker.ready)]
        s = self.settings
        behind = self.pg.run(
            self.pg.conn.fetch(
                """
                SELECT id, status FROM jobs WHERE
                   (status IN ('scheduled', 'retrying') AND run_at < now() - interval '1 s')
                OR (status = 'running' AND lease_expires_at < now() - interval '1 s')
                OR (status IN ('queued', 'dead') AND published_at IS NULL
                    AND dispatched_at < now() - make_interval(secs => $1::float8 + 1))
                OR (status = 'queued' AND queue = ANY($3)
                    AND published_at < now() - make_interval(secs => $2::float8 + 1))
                """,
                s.republish_after_seconds,
                s.lost_ticket_after_seconds,
                empty,
            )
        )
        assert behind == [], f"the tick left behind {behind}"

    # -- workers --------------------------------------------------------------------------

    @precondition(lambda self: any(self.held.values()) or any(self.unanswered.values()))
    @rule(data=st.data())
    def crash(self, data: st.DataObject) -> None:
        """A worker dies: its jobs wait for their leases to expire."""
        worker = data.draw(
            st.sampled_from([w for w in WORKERS if self.held[w] or self.unanswered[w]])
        )
        self.held[worker].clear()
        self.unanswered[worker].clear()

    @precondition(lambda self: self.claims)
    @rule(
        data=st.data(),
        action=ACTIONS,
        held=st.booleans(),
        jitter=st.sampled_from([0.0, 1.0]),
    )
    def write(self, data: st.DataObject, action: Action, held: bool, jitter: float) -> None:
        """A worker write naming a lease: one a worker holds, or any ever handed out (most
        are stale by now). It must be written exactly when the lease still holds the job;
        otherwise nothing changes."""
        holding = [c for w in WORKERS for c in self.held[w].values()]
        claim = data.draw(st.sampled_from(holding if held and holding else self.claims))
        fenced = self.fenced(claim)
        was = self.row(claim.id)
        expected: JobStatus
        if action == "complete":
            [written] = self.pg.run(self.pg.leases.complete([(claim.id, claim.lease_id, "{}")]))
            expected = JobStatus.SUCCEEDED
        elif action == "heartbeat":
            answer = self.pg.run(
                self.pg.leases.heartbeat([(claim.id, claim.lease_id)], self.settings.lease_seconds)
            )
            written = claim.id in answer
            expected = JobStatus.RUNNING
            if answer.get(claim.id):  # a cancel was requested: the worker honours it
                assert self.pg.run(self.pg.leases.cancel_running(claim))
                expected = JobStatus.CANCELED
        elif action == "release":
            ticket = self.pg.run(self.pg.leases.release(claim))
            written = self.row(claim.id) != was
            expected = JobStatus.CANCELED if was["cancel_requested"] else JobStatus.QUEUED
            assert (ticket is not None) == (written and expected == JobStatus.QUEUED)
            if ticket is not None:
                assert ticket.attempt == was["attempts"] - 1
                self.publish(lambda: data.draw(FATES), [ticket])
        else:
            decision = decide_failure(
                claim.attempts,
                claim.max_attempts,
                permanent=action == "fail_permanent",
                base=self.settings.retry_backoff_seconds,
                cap=self.settings.retry_backoff_max_seconds,
                rand=lambda: jitter,
            )
            error = {"type": "Boom", "message": "the handler raised"}
            failure = self.pg.run(
                self.pg.leases.fail(claim, decision.status, decision.delay_seconds, error)
            )
            written = self.row(claim.id) != was
            expected = decision.status
            if expected == JobStatus.RETRYING and was["cancel_requested"]:
                expected = JobStatus.CANCELED
            assert (failure is not None) == written
            assert failure is None or failure.status == expected
            dead = failure.dead_letter if failure is not None else None
            assert (dead is not None) == (written and expected == JobStatus.DEAD)
            if dead is not None:
                self.publish(lambda: data.draw(FATES), [dead])
        now = self.row(claim.id)
        assert written == fenced, f"{action} with a {'held' if fenced else 'stale'} lease"
        if not written:
            assert now == was, f"a refused {action} changed the row"
            self.drop(claim)
            return
        assert now["status"] == expected
        if expected == JobStatus.RUNNING:
            assert now["lease_expires_at"] > was["lease_expires_at"]
        else:
            self.drop(claim)

    # -- invariants -----------------------------------------------------------------------

    @invariant()
    def no_terminal_state_is_written_twice(self) -> None:
        """One terminal move per API retry, plus one if finished now; legal paths, fresh
        leases; a finished row is never rewritten."""
        history = self.pg.run(audit.history(self.pg.conn))
        shift = timedelta(seconds=self.offset)
        for row in self.rows():
            job_id, finished = row["id"], row["status"] in TERMINAL
            moves = history[job_id]
            assert audit.path_errors(moves) == [], (job_id, moves)
            assert audit.terminal_moves(moves) == self.retries[job_id] + finished, moves
            if not finished:
                assert job_id not in self.final, f"finished job {job_id} reopened: {moves}"
                continue
            snapshot = (
                row["status"],
                row["attempts"],
                row["result"],
                row["last_error"],
                row["errors"],
                row["cancel_requested"],
                row["finished_at"] + shift,
            )
            assert self.final.setdefault(job_id, snapshot) == snapshot, "a finished job changed"

    @invariant()
    def every_unfinished_job_is_recoverable(self) -> None:
        """Each unfinished job has a way forward that needs no worker to remember it."""
        ready = {t.job_id for t in self.broker.ready}
        for row in self.rows():
            status = row["status"]
            if status in (JobStatus.SCHEDULED, JobStatus.RETRYING):
                way = row["run_at"]  # promoted when due
            elif status == JobStatus.QUEUED:
                # a ticket in flight; else an unconfirmed publish (republished) or a confirmed
                # one (published again once its queue is empty)
                way = row["id"] in ready or row["dispatched_at"] or row["published_at"]
            elif status == JobStatus.RUNNING:
                way = row["lease_expires_at"]  # re-queued or dead when it expires
            else:
                continue
            assert way, f"{status} job {row['id']} has no way forward: {dict(row)}"

    @invariant()
    def an_idempotency_key_names_one_job(self) -> None:
        rows = self.rows()
        assert sorted(r["id"] for r in rows) == sorted(self.jobs)
        keyed = {(r["tenant"], r["idempotency_key"]): r["id"] for r in rows if r["idempotency_key"]}
        assert keyed == self.keys

    def teardown(self) -> None:
        """Drive to quiescence and check every job ends finished. Skipped when a step failed,
        so that its error is the one reported."""
        if sys.exc_info()[0] is None:
            self.drain()

    def drain(self) -> None:
        """Let every lease, delay, backoff and publish interval run out, tick, then claim and
        complete every ticket. Two rounds: the lost-ticket step waits for a queue to empty."""
        self.broker.fate = lambda: "confirmed"
        for _ in range(2):
            self.advance(3 * U)
            self.pg.run(self.scheduler.tick())
            asks = [(t.job_id, uuid.uuid4()) for t in self.broker.ready]
            self.broker.ready.clear()
            claimed = self.claim(asks)
            done = self.pg.run(self.pg.leases.complete([(c.id, c.lease_id, "{}") for c in claimed]))
            assert all(done)
        stuck = [(r["id"], r["status"]) for r in self.rows() if r["status"] not in TERMINAL]
        assert stuck == [], f"jobs never finished: {stuck}"
        self.no_terminal_state_is_written_twice()


def test_every_job_stays_recoverable_and_finishes_once(pg: Postgres) -> None:
    """A failure prints its steps and a ``@reproduce_failure`` blob: decorate
    ``JobStoreMachine`` with it to replay the failure."""
    JobStoreMachine.pg = pg
    run_state_machine_as_test(
        JobStoreMachine,
        settings=settings(
            max_examples=200,
            stateful_step_count=40,
            deadline=None,
            database=None,
            print_blob=True,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
