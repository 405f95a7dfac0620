"""Tickets from job rows, and the record that a ticket's publish was confirmed (docs/design.md
§3): a queued job whose ticket was not confirmed in time is published again by the scheduler."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from shared.db.sql import statement
from shared.domain import JobStatus
from shared.messaging import Ticket

TICKET_COLUMNS = (
    "id, type, attempts, queue, priority, traceparent, tracestate, status, last_error, tenant, held"
)


def tickets_of(rows: Iterable[Any]) -> list[Ticket]:
    """The tickets to send for rows a statement moved: none for a canceled job, nor for a
    held one (the dispatcher sends it later, ``shared.db.holds``)."""
    return [ticket_of(r) for r in rows if r.status != JobStatus.CANCELED and not r.held]


def ticket_of(job: Any) -> Ticket:
    """The ticket of a job row (any object with the ``TICKET_COLUMNS`` as attributes); a dead
    job's ticket goes to the dead-letter exchange, with its last error as the reason."""
    dead = job.status == JobStatus.DEAD
    reason = error_type = None
    if dead:
        err = job.last_error or {}
        error_type = err.get("type")
        reason = f"{error_type or 'dead'}: {err.get('message', '')}"
    return Ticket(
        job_id=job.id,
        type=job.type,
        attempt=job.attempts,
        queue=job.queue,
        priority=job.priority,
        traceparent=job.traceparent,
        tracestate=job.tracestate,
        dead=dead,
        reason=reason,
        error_type=error_type,
        tenant=job.tenant,
    )


class TicketStore:
    """Records confirmed publishes."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        # Single statements run in autocommit: no BEGIN and COMMIT round trips per batch.
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")

    async def mark_published(self, tickets: Sequence[Ticket]) -> None:
        """Record confirmed publishes, in one statement for the batch.

        A ticket marks its job only while the job is still at the ticket's attempt, so a late
        confirm never stands for a newer ticket (a dead letter, say). Rows locked by a claim
        are skipped rather than waited for: the claim records the publish itself, and waiting
        would chain lock waits between the API and the workers.
        """
        if not tickets:
            return
        async with self._autocommit.connect() as conn:
            await conn.execute(
                statement("""
                    UPDATE jobs SET published_at = now()
                    WHERE id IN (SELECT j.id FROM jobs j
                                 JOIN unnest(CAST(:ids AS uuid[]), CAST(:attempts AS int[]))
                                      AS t(id, attempt) ON j.id = t.id AND j.attempts = t.attempt
                                 WHERE j.status IN ('queued', 'dead') AND j.published_at IS NULL
                                   AND NOT j.held
                                 FOR UPDATE OF j SKIP LOCKED)
                """),
                {"ids": [t.job_id for t in tickets], "attempts": [t.attempt for t in tickets]},
            )

    async def republish(self, queue: str) -> int:
        """Have the scheduler publish again the tickets of the queue's queued jobs at its next
        tick (their broker queue was recreated, empty); returns how many jobs."""
        async with self._autocommit.connect() as conn:
            done = await conn.execute(
                statement("""
                    UPDATE jobs SET published_at = NULL, dispatched_at = now() - interval '1 day'
                    WHERE status = 'queued' AND NOT held AND queue = :queue
                """),
                {"queue": queue},
            )
        return int(done.rowcount)
