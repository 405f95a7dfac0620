"""A worker's statements: every write names the lease id it was given at claim time (the fencing
token) and a lease that has not run out, so a worker whose lease expired can no longer
complete, fail or extend its job (docs/design.md §3). Statements work on sets of jobs, one
round trip per batch; times come from the database clock."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.db import raw
from shared.db.holds import queued
from shared.db.records import RECORD_COLUMNS, JobRecord
from shared.db.sql import statement
from shared.db.tickets import TICKET_COLUMNS, ticket_of, tickets_of
from shared.domain import JobStatus
from shared.messaging import Ticket


@dataclass(frozen=True, slots=True)
class Claimed:
    """A job this worker holds: run it, then write back naming ``lease_id``."""

    id: uuid.UUID
    type: str
    queue: str
    priority: int
    payload: Any
    attempts: int
    max_attempts: int
    timeout_seconds: int
    lease_id: uuid.UUID
    retry_backoff_seconds: float | None
    retry_backoff_max_seconds: float | None
    traceparent: str | None
    tenant: str
    tracestate: str | None
    #: The span of the attempt that failed last (a ``traceparent``): this one retries it.
    attempt_span: str | None
    #: Seconds from due (``run_at``) to this start, on the database clock; ``None`` when the
    #: claim handed back an attempt already started (a retried claim).
    waited_seconds: float | None = None
    #: Set by ``lease`` (HTTP workers are told when their lease runs out).
    lease_expires_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Failure:
    """What a failed attempt's write made of its job: ``retrying``, ``dead`` (with the ticket
    for the dead-letter exchange) or ``canceled``."""

    status: JobStatus
    dead_letter: Ticket | None = None


#: Moves queued jobs to running; see ``LeaseStore.claim``. ``$1`` ids, ``$2`` lease ids,
#: ``$3`` lease ids of earlier tries, ``$4`` lease seconds.
CLAIM = """
    UPDATE jobs j SET status = 'running',
        attempts = CASE WHEN j.status = 'queued' THEN j.attempts + 1 ELSE j.attempts END,
        started_at = CASE WHEN j.status = 'queued' THEN now() ELSE j.started_at END,
        progress = CASE WHEN j.status = 'queued' THEN NULL ELSE j.progress END,
        lease_id = CASE WHEN j.status = 'queued' THEN v.lease ELSE j.lease_id END,
        lease_expires_at = now() + make_interval(secs => $4::float8),
        updated_at = now(), published_at = coalesce(j.published_at, now())
    FROM unnest($1::uuid[], $2::uuid[]) AS v(id, lease)
    WHERE j.id = v.id
      AND j.id IN (SELECT id FROM jobs
                   WHERE id = ANY($1::uuid[]) AND status IN ('queued', 'running')
                   ORDER BY id FOR UPDATE)
      AND ((j.status = 'queued' AND NOT j.held)
           OR (j.status = 'running' AND j.lease_id = ANY($3::uuid[])))
    RETURNING j.id, j.type, j.queue, j.priority, j.payload::text, j.attempts, j.max_attempts,
        j.timeout_seconds, j.lease_id, j.retry_backoff_seconds, j.retry_backoff_max_seconds,
        j.traceparent, j.tenant, j.tracestate, j.attempt_span,
        CASE WHEN j.started_at = now() THEN EXTRACT(EPOCH FROM now() - j.run_at)::float8 END
"""


#: Leases up to ``$4`` due jobs of tenant ``$1`` in queues ``$2`` (of types ``$3``, if not
#: null) to an HTTP worker: highest priority, then oldest, first (the order of the index
#: ``jobs_lease_ready``, so the backlog is read only as far as it takes; held jobs wait for
#: the dispatcher, ``shared.db.holds``); rows another claim holds are skipped, not waited
#: for. ``$5`` lease seconds.
LEASE = """
    UPDATE jobs j SET status = 'running', attempts = j.attempts + 1, started_at = now(),
        progress = NULL, lease_id = gen_random_uuid(), lease_expires_at = now() + make_interval(secs => $5),
        updated_at = now(), published_at = coalesce(j.published_at, now())
    WHERE j.id IN (SELECT id FROM jobs
                   WHERE tenant = $1 AND status = 'queued' AND NOT held
                     AND queue = ANY($2::text[])
                     AND ($3::text[] IS NULL OR type = ANY($3::text[]))
                   ORDER BY priority DESC, run_at, id LIMIT $4 FOR UPDATE SKIP LOCKED)
    RETURNING j.id, j.type, j.queue, j.priority, j.payload::text, j.attempts, j.max_attempts,
        j.timeout_seconds, j.lease_id, j.retry_backoff_seconds, j.retry_backoff_max_seconds,
        j.traceparent, j.tenant, j.tracestate, j.attempt_span,
        EXTRACT(EPOCH FROM now() - j.run_at)::float8, j.lease_expires_at
"""

#: The running job ``$1`` of tenant ``$2`` held under lease ``$3`` (not expired).
HELD = """
    SELECT id, type, queue, priority, payload::text, attempts, max_attempts, timeout_seconds,
        lease_id, retry_backoff_seconds, retry_backoff_max_seconds, traceparent, tenant,
        tracestate, attempt_span, NULL, lease_expires_at
    FROM jobs WHERE id = $1 AND tenant = $2 AND lease_id = $3 AND status = 'running'
      AND lease_expires_at > now()
"""


#: An HTTP worker's heartbeat on job ``$1`` of tenant ``$2`` under lease ``$3``: ``$4`` more
#: seconds, and its progress ``$5`` (JSON text) unless null.
HEARTBEAT_HELD = """
    UPDATE jobs j SET lease_expires_at = now() + make_interval(secs => $4::float8),
        progress = CASE WHEN $5::text IS NULL THEN j.progress
                        ELSE $5::jsonb || jsonb_build_object('at', now()) END
    WHERE j.id = $1 AND j.tenant = $2 AND j.lease_id = $3 AND j.status = 'running'
      AND j.lease_expires_at > now()
    RETURNING j.cancel_requested
"""

#: An HTTP worker's success on job ``$1`` of tenant ``$2`` under lease ``$3``, result ``$4``.
COMPLETE_HELD = f"""
    UPDATE jobs j SET status = 'succeeded', result = $4::jsonb, finished_at = now(),
        updated_at = now(), lease_id = NULL, lease_expires_at = NULL
    WHERE j.id = $1 AND j.tenant = $2 AND j.lease_id = $3 AND j.status = 'running'
      AND j.lease_expires_at > now()
    RETURNING {RECORD_COLUMNS}
"""


def _claimed(row: Any) -> Claimed:
    values = list(row)
    values[4] = _json.decode(values[4])  # the payload
    return Claimed(*values)


_json = msgspec.json.Decoder()


class LeaseStore:
    """A worker's writes: claim, heartbeat and the outcome of each attempt, fenced by
    the lease id."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        # Single statements run in autocommit: no BEGIN and COMMIT round trips per batch.
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")

    async def claim(
        self,
        ids: Sequence[uuid.UUID],
        lease_seconds: float,
        lease_ids: Sequence[uuid.UUID] | None = None,
        tried: Sequence[uuid.UUID] = (),
    ) -> tuple[list[Claimed], set[uuid.UUID]]:
        """Move queued jobs to running under the given lease ids; one statement for the batch.

        A claim whose reply was lost may have committed: its retry names fresh lease ids and,
        in ``tried``, those of the earlier tries. A job still running under one of those is
        returned again, with that lease and without spending another attempt; a job that
        went back to the queue meanwhile is claimed under the fresh id, so no lease id ever
        fences two claims. Returns the claimed jobs and the ids that exist but could not be
        claimed (running under another lease, finished, canceled or not yet due): their
        tickets are duplicates or stale. Ids in neither set name no job at all.
        """
        leases = list(lease_ids) if lease_ids is not None else [uuid.uuid4() for _ in ids]
        async with raw.connection(self.engine) as conn:
            rows = await conn.fetch(CLAIM, list(ids), leases, list(tried), lease_seconds)
            claimed = [_claimed(row) for row in rows]
            others: set[uuid.UUID] = set()
            if len(claimed) < len(ids):
                got = {c.id for c in claimed}
                rest = [i for i in ids if i not in got]
                found = await conn.fetch("SELECT id FROM jobs WHERE id = ANY($1::uuid[])", rest)
                others = {row[0] for row in found}
        return claimed, others

    async def lease(
        self,
        tenant: str,
        queues: Sequence[str],
        types: Sequence[str] | None,
        n: int,
        lease_seconds: float,
    ) -> list[Claimed]:
        """Lease up to ``n`` of the tenant's due jobs to an HTTP worker, each under a fresh
        lease id (its fencing token, as a worker's claim gives); the job's ticket, if still
        queued in RabbitMQ, is then stale for the AMQP workers' claim."""
        async with raw.connection(self.engine) as conn:
            rows = await conn.fetch(
                LEASE, tenant, list(queues), None if types is None else list(types), n,
                lease_seconds,
            )  # fmt: skip
        return [_claimed(row) for row in rows]

    async def held(self, tenant: str, job_id: uuid.UUID, lease_id: uuid.UUID) -> Claimed | None:
        """The job if ``lease_id`` still holds it for ``tenant``; else ``None``."""
        async with raw.connection(self.engine) as conn:
            row = await conn.fetchrow(HELD, job_id, tenant, lease_id)
        return None if row is None else _claimed(row)

    async def heartbeat_held(
        self,
        tenant: str,
        job_id: uuid.UUID,
        lease_id: uuid.UUID,
        lease_seconds: float,
        progress_json: str | None,
    ) -> bool | None:
        """An HTTP worker's heartbeat (with its progress), checked and written in one
        statement: whether a cancel was requested, or ``None`` if the lease does not hold the
        job (anything else: ran out, another lease, another tenant's job)."""
        async with raw.connection(self.engine) as conn:
            row = await conn.fetchrow(
                HEARTBEAT_HELD, job_id, tenant, lease_id, lease_seconds, progress_json
            )
        return None if row is None else bool(row[0])

    async def complete_held(
        self, tenant: str, job_id: uuid.UUID, lease_id: uuid.UUID, result_json: str
    ) -> JobRecord | None:
        """An HTTP worker's success, checked and written in one statement: the job as it is
        now, or ``None`` if the lease does not hold it (nothing written)."""
        async with raw.connection(self.engine) as conn:
            row = await conn.fetchrow(COMPLETE_HELD, job_id, tenant, lease_id, result_json)
        return None if row is None else JobRecord.of(row)

    async def progress(self, items: Sequence[tuple[uuid.UUID, uuid.UUID, str]]) -> set[uuid.UUID]:
        """Record ``(job id, lease id, progress JSON)`` of running jobs, in one statement;
        returns the jobs written (a lease that ran out writes nothing)."""
        async with raw.connection(self.engine) as conn:
            rows = await conn.fetch(
                """
                UPDATE jobs j SET progress = v.progress::jsonb || jsonb_build_object('at', now())
                FROM unnest($1::uuid[], $2::uuid[], $3::text[]) AS v(id, lease, progress)
                WHERE j.id = v.id AND j.lease_id = v.lease AND j.status = 'running'
                  AND j.lease_expires_at > now()
                RETURNING j.id
                """,
                [i[0] for i in items], [i[1] for i in items], [i[2] for i in items],
            )  # fmt: skip
        return {row[0] for row in rows}

    async def heartbeat(
        self, leases: Sequence[tuple[uuid.UUID, uuid.UUID]], lease_seconds: float
    ) -> dict[uuid.UUID, bool]:
        """Extend the leases still held; returns ``{job id: cancel requested}`` for those.

        A job missing from the answer has lost its lease: its worker must stop writing.
        """
        if not leases:
            return {}
        async with self._autocommit.connect() as conn:
            rows = (
                await conn.execute(
                    statement("""
                    UPDATE jobs j SET lease_expires_at = now() + make_interval(secs => :lease)
                    FROM unnest(CAST(:ids AS uuid[]), CAST(:leases AS uuid[])) AS v(id, lease)
                    WHERE j.id = v.id AND j.lease_id = v.lease AND j.status = 'running'
                      AND j.lease_expires_at > now()
                    RETURNING j.id, j.cancel_requested
                """),
                    {
                        "ids": [i for i, _ in leases],
                        "leases": [lease for _, lease in leases],
                        "lease": lease_seconds,
                    },
                )
            ).all()
        return {row.id: row.cancel_requested for row in rows}

    async def complete(self, items: Sequence[tuple[uuid.UUID, uuid.UUID, str]]) -> list[bool]:
        """Record successes ``(job id, lease id, result JSON)`` in one statement.

        Returns, per item, whether it was written: ``False`` means the lease was stale.
        """
        async with raw.connection(self.engine) as conn:
            rows = await conn.fetch(
                """
                UPDATE jobs j SET status = 'succeeded', result = v.result::jsonb,
                    finished_at = now(), updated_at = now(),
                    lease_id = NULL, lease_expires_at = NULL
                FROM unnest($1::uuid[], $2::uuid[], $3::text[]) AS v(id, lease, result)
                WHERE j.id = v.id AND j.lease_id = v.lease AND j.status = 'running'
                  AND j.lease_expires_at > now()
                RETURNING j.id
                """,
                [i[0] for i in items],
                [i[1] for i in items],
                [i[2] for i in items],
            )
        done = {row[0] for row in rows}
        return [item[0] in done for item in items]

    async def fail(
        self,
        job: Claimed,
        status: JobStatus,
        delay_seconds: float,
        error: dict[str, str],
        span: str | None = None,
    ) -> Failure | None:
        """Record a failed attempt as ``retrying`` (due after the delay) or ``dead`` (or
        ``canceled``, if a cancel was requested meanwhile), with the ``traceparent`` of the
        attempt's ``span`` (the next attempt's span links to it); ``None`` if the lease was
        stale (nothing written then)."""
        err = json.dumps({**error, "attempt": job.attempts})
        async with self._autocommit.connect() as conn:
            row = (
                await conn.execute(
                    statement(
                        f"""
                    UPDATE jobs SET
                        status = CASE WHEN cancel_requested AND :status = 'retrying'
                                      THEN 'canceled' ELSE :status END,
                        last_error = CAST(:err AS jsonb),
                        errors = errors || jsonb_build_array(CAST(:err AS jsonb)),
                        run_at = now() + make_interval(secs => :delay),
                        finished_at = CASE WHEN :status = 'dead' OR cancel_requested
                                           THEN now() END,
                        dispatched_at = CASE WHEN :status = 'dead' THEN now() END,
                        published_at = NULL, lease_id = NULL, lease_expires_at = NULL,
                        attempt_span = CAST(:span AS text), updated_at = now()
                    WHERE id = :id AND lease_id = :lease AND status = 'running'
                      AND lease_expires_at > now()
                    RETURNING {TICKET_COLUMNS}
                """,
                        "last_error",
                    ),
                    {
                        "span": span,
                        "status": str(status),
                        "err": err,
                        "delay": delay_seconds,
                        "id": job.id,
                        "lease": job.lease_id,
                    },
                )
            ).first()
        if row is None:
            return None
        dead = row.status == JobStatus.DEAD
        return Failure(JobStatus(row.status), ticket_of(row) if dead else None)

    async def release(self, job: Claimed) -> Ticket | None:
        """Hand a held job back to the queue without counting the attempt (graceful
        shutdown); returns its new ticket, or ``None`` if the lease was already lost or a
        cancel was requested (the job is canceled instead)."""
        row = await self._finish_running(
            job,
            "status = CASE WHEN cancel_requested THEN 'canceled' ELSE 'queued' END,"
            " finished_at = CASE WHEN cancel_requested THEN now() END,"
            f" attempts = attempts - 1, {queued(ends_queued='NOT cancel_requested')},"
            " published_at = NULL, started_at = NULL",
        )
        return None if row is None else next(iter(tickets_of([row])), None)

    async def cancel_running(self, job: Claimed) -> bool:
        """Honour a cancel request on a job this worker holds."""
        row = await self._finish_running(job, "status = 'canceled', finished_at = now()")
        return row is not None

    async def _finish_running(self, job: Claimed, assignments: str) -> sa.Row[Any] | None:
        async with self._autocommit.connect() as conn:
            row = (
                await conn.execute(
                    statement(
                        f"""
                    UPDATE jobs SET {assignments}, lease_id = NULL, lease_expires_at = NULL,
                        updated_at = now()
                    WHERE id = :id AND lease_id = :lease AND status = 'running'
                      AND lease_expires_at > now()
                    RETURNING {TICKET_COLUMNS}
                """,
                        "last_error",
                    ),
                    {"id": job.id, "lease": job.lease_id},
                )
            ).first()
        return row
