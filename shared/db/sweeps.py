"""The scheduler's statements: due jobs, expired leases, unconfirmed and lost tickets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from shared.db import raw
from shared.db.holds import queued
from shared.db.sql import statement
from shared.db.tickets import TICKET_COLUMNS, tickets_of
from shared.domain import JobStatus
from shared.messaging import Ticket


class SweepStore:
    """The scheduler's sweeps: each takes a bounded batch with ``FOR UPDATE SKIP LOCKED``, so
    several schedulers never take the same job."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        # Single statements run in autocommit: no BEGIN and COMMIT round trips per batch.
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")

    async def promote_due(self, limit: int) -> list[Ticket]:
        """Move due scheduled and retrying jobs to queued; returns their tickets."""
        return await self._take(
            f"""
            UPDATE jobs SET status = 'queued', {queued()}, published_at = NULL,
                updated_at = now()
            WHERE id IN (SELECT id FROM jobs
                         WHERE status IN ('scheduled', 'retrying') AND run_at <= now()
                         ORDER BY run_at LIMIT :limit FOR UPDATE SKIP LOCKED)
            RETURNING {TICKET_COLUMNS}
        """,
            limit=limit,
        )

    async def expire_leases(self, limit: int) -> tuple[list[Ticket], list[tuple[str, str]]]:
        """Running jobs whose lease expired: queued again while attempts remain, else dead
        (canceled if a cancel was requested). Returns the tickets to send, and the ``(queue,
        type)`` of the jobs it canceled (they need none). The next attempt retries one whose
        span is unknown (its worker died), so it links no earlier attempt (``attempt_span``)."""
        rows = await self._rows(
            f"""
            UPDATE jobs SET
                status = CASE WHEN cancel_requested THEN 'canceled'
                              WHEN attempts < max_attempts THEN 'queued' ELSE 'dead' END,
                last_error = CASE WHEN attempts < max_attempts THEN last_error ELSE e.err END,
                errors = errors || jsonb_build_array(e.err),
                finished_at = CASE WHEN attempts < max_attempts AND NOT cancel_requested
                                   THEN NULL ELSE now() END,
                lease_id = NULL, lease_expires_at = NULL,
                {queued(ends_queued="attempts < max_attempts AND NOT cancel_requested")},
                published_at = NULL, attempt_span = NULL, updated_at = now()
            FROM (SELECT id AS eid, jsonb_build_object(
                        'type', 'LeaseExpired', 'attempt', attempts,
                        'message', 'the worker stopped heartbeating (crashed or stalled)') AS err
                  FROM jobs WHERE status = 'running' AND lease_expires_at < now()
                  ORDER BY lease_expires_at LIMIT :limit FOR UPDATE SKIP LOCKED) e
            WHERE id = e.eid
            RETURNING {TICKET_COLUMNS}
        """,
            limit=limit,
        )
        canceled = [(r.queue, r.type) for r in rows if r.status == JobStatus.CANCELED]
        return tickets_of(rows), canceled

    async def take_unpublished(self, older_than: float, limit: int) -> list[Ticket]:
        """Queued and dead jobs whose ticket was not confirmed ``older_than`` seconds after it
        was sent; stamps them as sent again so another scheduler does not take them too."""
        return await self._take(
            f"""
            UPDATE jobs SET dispatched_at = now(), updated_at = now()
            WHERE id IN (SELECT id FROM jobs
                         WHERE status IN ('queued', 'dead') AND published_at IS NULL
                           AND dispatched_at < now() - make_interval(secs => :older)
                         ORDER BY dispatched_at LIMIT :limit FOR UPDATE SKIP LOCKED)
            RETURNING {TICKET_COLUMNS}
        """,
            limit=limit,
            older=older_than,
        )

    async def queues_with_stale_tickets(self, older_than: float) -> list[str]:
        """Queues holding jobs whose confirmed ticket is older than ``older_than`` seconds."""
        async with self._autocommit.connect() as conn:
            return list(
                (
                    await conn.execute(
                        statement("""
                SELECT DISTINCT queue FROM jobs
                WHERE status = 'queued' AND NOT held
                  AND published_at < now() - make_interval(secs => :older)
            """),
                        {"older": older_than},
                    )
                ).scalars()
            )

    async def take_lost(self, queue: str, older_than: float, limit: int) -> list[Ticket]:
        """Re-send the oldest confirmed-but-unclaimed jobs of a queue the broker shows empty."""
        return await self._take(
            f"""
            UPDATE jobs SET dispatched_at = now(), published_at = NULL, updated_at = now()
            WHERE id IN (SELECT id FROM jobs
                         WHERE status = 'queued' AND NOT held AND queue = :queue
                           AND published_at < now() - make_interval(secs => :older)
                         ORDER BY published_at LIMIT :limit FOR UPDATE SKIP LOCKED)
            RETURNING {TICKET_COLUMNS}
        """,
            limit=limit,
            older=older_than,
            queue=queue,
        )

    async def delete_finished(self, queue: str, status: str, older_than: float, limit: int) -> int:
        """Delete up to ``limit`` of a queue's jobs that ended ``status`` more than
        ``older_than`` seconds ago, oldest first; returns how many. One short statement: it
        locks only the rows it deletes (and skips rows locked by anything else)."""
        async with raw.connection(self.engine) as conn:
            return int(await conn.fetchval(DELETE_FINISHED, queue, status, older_than, limit))

    async def queues_with_finished(self) -> list[str]:
        """The queues that hold finished jobs, declared or not (a deleted queue's finished
        jobs stay until their retention ends): one short index probe per queue."""
        async with raw.connection(self.engine) as conn:
            return [row[0] for row in await conn.fetch(QUEUES_WITH_FINISHED)]

    async def queue_figures(self, tenant: str | None = None) -> list[QueueFigures]:
        """What every declared queue holds now, by what it waits for (docs/operations.md §2),
        of every tenant or (the dashboard's) one. Each part reads the partial index of its
        status, never the finished jobs."""
        async with raw.connection(self.engine) as conn:
            rows = await conn.fetch(FIGURES, tenant)
        return [QueueFigures(*row) for row in rows]

    async def _take(self, sql: str, **params: Any) -> list[Ticket]:
        return tickets_of(await self._rows(sql, **params))

    async def _rows(self, sql: str, **params: Any) -> list[Any]:
        async with self._autocommit.connect() as conn:
            return list((await conn.execute(statement(sql, "last_error"), params)).all())


@dataclass(frozen=True, slots=True)
class QueueFigures:
    """One queue's jobs by what they wait for; ``oldest_ready_seconds``: how long the oldest
    ready job has been due (0 with none)."""

    queue: str
    ready: int
    delayed: int
    retrying: int
    running: int
    oldest_ready_seconds: float
    unconfirmed: int


#: Finished jobs of queue ``$1`` in status ``$2`` finished over ``$3`` seconds ago, at most
#: ``$4``, read in the order of ``jobs_finished``, with the record of their callbacks (in the
#: same statement: a cascading foreign key, a trigger per row, tripled the time it takes).
DELETE_FINISHED = """
    WITH gone AS (
        DELETE FROM jobs WHERE id IN (
            SELECT id FROM jobs
            WHERE queue = $1 AND status = $2 AND status IN ('succeeded', 'dead', 'canceled')
              AND finished_at < now() - make_interval(secs => $3::float8)
            ORDER BY finished_at LIMIT $4 FOR UPDATE SKIP LOCKED)
        RETURNING id),
    attempts AS (DELETE FROM callback_deliveries WHERE job_id = ANY(ARRAY(SELECT id FROM gone)))
    SELECT count(*) FROM gone
"""

#: A loose scan of ``jobs_finished``: each step jumps to the next queue name.
QUEUES_WITH_FINISHED = """
    WITH RECURSIVE q(queue) AS (
        (SELECT queue FROM jobs WHERE status IN ('succeeded', 'dead', 'canceled')
         ORDER BY queue LIMIT 1)
        UNION ALL
        SELECT (SELECT j.queue FROM jobs j
                WHERE j.status IN ('succeeded', 'dead', 'canceled') AND j.queue > q.queue
                ORDER BY j.queue LIMIT 1)
        FROM q WHERE q.queue IS NOT NULL)
    SELECT queue FROM q WHERE queue IS NOT NULL
"""

#: ``QueueFigures`` of every declared queue, each status counted through its partial index:
#: ``jobs_ready`` and ``jobs_held`` (ready counts held jobs: due, waiting for the dispatcher),
#: ``jobs_due`` and ``jobs_lease_expiry``; of tenant ``$1`` only unless it is null.
FIGURES = """
    WITH queued AS (
        SELECT queue, count(*) FILTER (WHERE run_at <= now()) AS ready,
            coalesce(EXTRACT(EPOCH FROM now() - min(run_at) FILTER (WHERE run_at <= now())), 0)
                AS oldest,
            count(*) FILTER (WHERE published_at IS NULL AND NOT held) AS unconfirmed
        FROM jobs WHERE ((status = 'queued' AND NOT held) OR (status = 'queued' AND held))
            AND ($1::text IS NULL OR tenant = $1)
        GROUP BY queue),
    waiting AS (
        SELECT queue, count(*) FILTER (WHERE status = 'scheduled') AS delayed,
            count(*) FILTER (WHERE status = 'retrying') AS retrying
        FROM jobs WHERE status IN ('scheduled', 'retrying') AND ($1::text IS NULL OR tenant = $1)
        GROUP BY queue),
    running AS (
        SELECT queue, count(*) AS running FROM jobs
        WHERE status = 'running' AND ($1::text IS NULL OR tenant = $1) GROUP BY queue)
    SELECT q.name, coalesce(queued.ready, 0), coalesce(waiting.delayed, 0),
        coalesce(waiting.retrying, 0), coalesce(running.running, 0),
        coalesce(queued.oldest, 0)::float8, coalesce(queued.unconfirmed, 0)
    FROM queues q
    LEFT JOIN queued ON queued.queue = q.name
    LEFT JOIN waiting ON waiting.queue = q.name
    LEFT JOIN running ON running.queue = q.name
    ORDER BY q.name
"""
