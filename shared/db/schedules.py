"""Cron schedules: the tenants' reads and writes, and the scheduler's firing of due ticks
(docs/design.md §9).

A tick fires in one transaction: the schedule row is locked ``FOR UPDATE SKIP LOCKED`` (a
second scheduler takes other schedules), the fire row is inserted under the primary key
(schedule, tick), the tick's job is inserted by the submit's own statement on the same
connection (``shared.db.submits``: queued, ``dispatched_at`` now and unconfirmed, so a crash
between the commit and the publish is covered by the unconfirmed-ticket sweep), and
``next_fire_at`` moves on. Either all of it commits or none: a tick has one fire and one job.
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import msgspec
import sqlalchemy as sa
from opentelemetry import trace
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import col, select

from shared import cron
from shared.db import raw
from shared.db.errors import is_transient
from shared.db.models import Schedule, ScheduleFire
from shared.db.submits import NewJob, insert_on
from shared.db.tickets import ticket_of
from shared.domain import CANCELABLE, TERMINAL, JobStatus
from shared.ids import uuid7
from shared.messaging import Ticket
from shared.telemetry import job_trace

log = logging.getLogger("jobq.scheduler")

#: Fires shown with a schedule, newest first.
RECENT_FIRES = 20
WAITING = sorted(CANCELABLE)
UNFINISHED = sorted(set(JobStatus) - TERMINAL)


class ScheduleStore:
    """The ``schedules`` and ``schedule_fires`` tables."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def create(self, schedule: Schedule) -> Schedule | None:
        """Insert ``schedule``; ``None`` if its tenant has one of that name."""
        stmt = (
            insert(Schedule)
            .values(**schedule.model_dump(exclude_none=True))
            .on_conflict_do_nothing()
            .returning(*_columns())
        )
        async with self.engine.begin() as conn:
            row = (await conn.execute(stmt)).first()
        return None if row is None else Schedule.model_validate(dict(row._mapping))

    async def count(self, tenant: str) -> int:
        async with self.engine.connect() as conn:
            q = sa.select(sa.func.count()).where(col(Schedule.tenant) == tenant)
            return int(await conn.scalar(q) or 0)

    async def get(self, tenant: str, schedule_id: uuid.UUID) -> Schedule | None:
        q = select(Schedule).where(col(Schedule.id) == schedule_id, col(Schedule.tenant) == tenant)
        async with self.engine.connect() as conn:
            row = (await conn.execute(q)).first()
        return None if row is None else Schedule.model_validate(dict(row._mapping))

    async def fires(self, schedule_id: uuid.UUID, limit: int = RECENT_FIRES) -> list[ScheduleFire]:
        q = (
            select(ScheduleFire)
            .where(col(ScheduleFire.schedule_id) == schedule_id)
            .order_by(col(ScheduleFire.tick).desc())
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            return [ScheduleFire.model_validate(dict(r._mapping)) for r in await conn.execute(q)]

    async def list(self, tenant: str, limit: int, after: str | None) -> list[Schedule]:
        """A tenant's schedules by name, those after ``after``; ``limit`` at most."""
        q = select(Schedule).where(col(Schedule.tenant) == tenant)
        if after is not None:
            q = q.where(col(Schedule.name) > after)
        q = q.order_by(col(Schedule.name)).limit(limit)
        async with self.engine.connect() as conn:
            return [Schedule.model_validate(dict(r._mapping)) for r in await conn.execute(q)]

    async def update(
        self, tenant: str, schedule_id: uuid.UUID, changes: dict[str, Any]
    ) -> Schedule | None:
        """Apply ``changes`` (already checked, ``next_fire_at`` included if it moves)."""
        stmt = (
            sa.update(Schedule)
            .where(col(Schedule.id) == schedule_id, col(Schedule.tenant) == tenant)
            .values(**changes, updated_at=sa.func.now())
            .returning(*_columns())
        )
        async with self.engine.begin() as conn:
            row = (await conn.execute(stmt)).first()
        return None if row is None else Schedule.model_validate(dict(row._mapping))

    async def delete(self, tenant: str, schedule_id: uuid.UUID) -> bool:
        """Delete a schedule and its fires; the jobs it made stay."""
        stmt = sa.delete(Schedule).where(
            col(Schedule.id) == schedule_id, col(Schedule.tenant) == tenant
        )
        async with self.engine.begin() as conn:
            return bool((await conn.execute(stmt)).rowcount)

    async def delete_fires(self, older_than: float, limit: int) -> int:
        """Delete up to ``limit`` fires whose tick is over ``older_than`` seconds old, oldest
        first; returns how many. A tick's fire is needed only until ``next_fire_at`` has moved
        past it, which its own transaction did."""
        async with raw.connection(self.engine) as conn:
            done = await conn.execute(DELETE_FIRES, older_than, limit)
        return int(done.split()[-1])

    async def fire_due(self, limit: int, grace: float) -> Fired:
        """Fire the due ticks of up to ``limit`` schedules no other scheduler holds, in one
        transaction; returns the tickets to publish once it committed. Ticks over ``grace``
        seconds late were missed: each schedule's catch-up bound applies to them."""
        fired = Fired()
        async with raw.connection(self.engine) as conn, conn.transaction():
            due = await conn.fetch(DUE, limit)
            fired.taken = len(due)
            for s in due:
                one = Fired()
                try:  # under a savepoint: one schedule's fault spares the rest of the batch
                    async with conn.transaction():
                        await _fire(conn, s, s["now"], grace, one)
                except Exception as exc:
                    if is_transient(exc):
                        raise
                    log.exception("schedule not fired", extra={"schedule": str(s["id"])})
                    continue
                fired.add(one)
        return fired


@dataclass
class Fired:
    """What one ``fire_due`` did: tickets of the new jobs, fires by outcome, the ``(queue,
    type)`` of new jobs and of previous runs it canceled (the ``cancel`` policy)."""

    tickets: list[Ticket] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    submitted: list[tuple[str, str]] = field(default_factory=list)
    canceled: list[tuple[str, str]] = field(default_factory=list)
    skipped_ticks: int = 0
    #: Schedules taken (a full batch: there may be more).
    taken: int = 0

    def add(self, other: Fired) -> None:
        self.tickets += other.tickets
        self.outcomes.update(other.outcomes)
        self.submitted += other.submitted
        self.canceled += other.canceled
        self.skipped_ticks += other.skipped_ticks


async def _fire(conn: Any, s: Any, now: datetime, grace: float, fired: Fired) -> None:
    try:
        owed = cron.due(s["cron"], s["timezone"], s["next_fire_at"], now, s["catch_up"], grace)
    except cron.BadSchedule:  # a zone the system no longer knows: paused, not retried forever
        await conn.execute("UPDATE schedules SET paused = true WHERE id = $1", s["id"])
        fired.outcomes["paused_bad_schedule"] += 1
        return
    previous: uuid.UUID | None = s["last_job_id"]
    template = msgspec.json.decode(s["job"]) if isinstance(s["job"], str) else s["job"]
    for tick in owed.ticks:
        # The previous tick's job, if unfinished and the policy cares.
        running = (
            previous if s["overlap"] != "allow" and await _unfinished(conn, previous) else None
        )
        skip = running is not None and s["overlap"] == "skip"
        outcome, job_id = ("skipped_overlap", None) if skip else ("fired", uuid7())
        if await conn.fetchval(INSERT_FIRE, s["id"], tick, job_id, outcome) is None:
            continue  # fired before (cannot happen under the row lock; the key decides)
        if running is not None and not skip:
            await _cancel(conn, running, fired)
        if job_id is not None:
            outcome, job_id = await _submit(conn, s, template, tick, job_id, fired)
            if job_id is None:
                await conn.execute(SET_OUTCOME, s["id"], tick, outcome)
            else:
                previous = job_id
        fired.outcomes[outcome] += 1
    fired.skipped_ticks += owed.skipped
    last = owed.ticks[-1] if owed.ticks else None
    await conn.execute(ADVANCE, s["id"], owed.next_at, last, previous, owed.skipped)


async def _submit(
    conn: Any,
    s: Any,
    template: dict[str, Any],
    tick: datetime,
    job_id: uuid.UUID,
    fired: Fired,
) -> tuple[str, uuid.UUID | None]:
    """Insert the tick's job as a submit would; its idempotency key names the schedule and
    the tick (``schedule:<id>:<tick>``), so the job says where it came from."""
    traceparent, _ = job_trace(trace.INVALID_SPAN, None, None)
    job = NewJob(
        id=job_id,
        tenant=s["tenant"],
        type=template["type"],
        queue=template["queue"],
        payload_json=msgspec.json.encode(template.get("payload")).decode(),
        priority=template["priority"],
        max_attempts=template.get("max_attempts"),
        timeout_seconds=template.get("timeout_seconds"),
        delay_seconds=0.0,
        run_at=None,
        idempotency_key=f"schedule:{s['id']}:{tick.strftime('%Y-%m-%dT%H:%M:%SZ')}",
        retry_backoff_seconds=template.get("retry_backoff_seconds"),
        retry_backoff_max_seconds=template.get("retry_backoff_max_seconds"),
        traceparent=traceparent,
        concurrency_key=template.get("concurrency_key"),
        concurrency_limit=(template.get("concurrency_limit") or 1)
        if template.get("concurrency_key")
        else None,
    )
    [outcome] = await insert_on(conn, [job])
    if isinstance(outcome, Exception):  # its queue was deleted since: recorded, not retried
        return "queue_missing", None
    record, created = outcome
    if created:
        fired.submitted.append((record.queue, record.type))
        if record.status == JobStatus.QUEUED and not record.held:
            fired.tickets.append(ticket_of(record))
    return "fired", record.id


async def _unfinished(conn: Any, job_id: uuid.UUID | None) -> bool:
    """Whether the job runs or waits to (a job deleted by retention had finished)."""
    if job_id is None:
        return False
    status = await conn.fetchval("SELECT status FROM jobs WHERE id = $1", job_id)
    return status is not None and status not in TERMINAL


async def _cancel(conn: Any, job_id: uuid.UUID, fired: Fired) -> None:
    """Cancel the previous run: a waiting job at once (its ticket, if this fire made it, is
    not sent), a running one at its worker's next heartbeat."""
    row = await conn.fetchrow(CANCEL, job_id, WAITING, UNFINISHED)
    if row is not None and row["status"] == JobStatus.CANCELED:
        fired.canceled.append((row["queue"], row["type"]))
        fired.tickets = [t for t in fired.tickets if t.job_id != job_id]


def _columns() -> list[Any]:
    return list(Schedule.metadata.tables["schedules"].columns)


DELETE_FIRES = """
    DELETE FROM schedule_fires WHERE ctid = ANY(ARRAY(
        SELECT ctid FROM schedule_fires WHERE tick < now() - make_interval(secs => $1::float8)
        ORDER BY tick LIMIT $2 FOR UPDATE SKIP LOCKED))
"""

DUE = """
    SELECT id, tenant, cron, timezone, job, overlap, catch_up, next_fire_at, last_job_id,
        now() AS now
    FROM schedules WHERE NOT paused AND next_fire_at <= now()
    ORDER BY next_fire_at LIMIT $1 FOR UPDATE SKIP LOCKED
"""

INSERT_FIRE = """
    INSERT INTO schedule_fires (schedule_id, tick, job_id, outcome) VALUES ($1, $2, $3, $4)
    ON CONFLICT DO NOTHING RETURNING tick
"""

SET_OUTCOME = """
    UPDATE schedule_fires SET outcome = $3, job_id = NULL WHERE schedule_id = $1 AND tick = $2
"""

ADVANCE = """
    UPDATE schedules SET next_fire_at = $2, last_tick = coalesce($3, last_tick),
        last_job_id = $4, skipped_ticks = skipped_ticks + $5, updated_at = now()
    WHERE id = $1
"""

#: ``$2``: the waiting statuses (canceled at once), ``$3``: the unfinished ones.
CANCEL = """
    UPDATE jobs SET
        status = CASE WHEN status = ANY($2::text[]) THEN 'canceled' ELSE status END,
        finished_at = CASE WHEN status = ANY($2::text[]) THEN now() ELSE finished_at END,
        cancel_requested = cancel_requested OR status = 'running', updated_at = now()
    WHERE id = $1 AND status = ANY($3::text[])
    RETURNING status, queue, type
"""
