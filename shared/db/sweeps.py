"""The scheduler's statements: due jobs, expired leases, unconfirmed and lost tickets."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from shared.db.sql import statement
from shared.db.tickets import TICKET_COLUMNS, ticket_of
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
            UPDATE jobs SET status = 'queued', dispatched_at = now(), published_at = NULL,
                updated_at = now()
            WHERE id IN (SELECT id FROM jobs
                         WHERE status IN ('scheduled', 'retrying') AND run_at <= now()
                         ORDER BY run_at LIMIT :limit FOR UPDATE SKIP LOCKED)
            RETURNING {TICKET_COLUMNS}
        """,
            limit=limit,
        )

    async def expire_leases(self, limit: int) -> list[Ticket]:
        """Running jobs whose lease expired: queued again while attempts remain, else dead
        (canceled if a cancel was requested). The next attempt retries one whose span is
        unknown (its worker died), so it links no earlier attempt (``attempt_span``)."""
        return await self._take(
            f"""
            UPDATE jobs SET
                status = CASE WHEN cancel_requested THEN 'canceled'
                              WHEN attempts < max_attempts THEN 'queued' ELSE 'dead' END,
                last_error = CASE WHEN attempts < max_attempts THEN last_error ELSE e.err END,
                errors = errors || jsonb_build_array(e.err),
                finished_at = CASE WHEN attempts < max_attempts AND NOT cancel_requested
                                   THEN NULL ELSE now() END,
                lease_id = NULL, lease_expires_at = NULL, dispatched_at = now(),
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
                WHERE status = 'queued' AND published_at < now() - make_interval(secs => :older)
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
                         WHERE status = 'queued' AND queue = :queue
                           AND published_at < now() - make_interval(secs => :older)
                         ORDER BY published_at LIMIT :limit FOR UPDATE SKIP LOCKED)
            RETURNING {TICKET_COLUMNS}
        """,
            limit=limit,
            older=older_than,
            queue=queue,
        )

    async def _take(self, sql: str, **params: Any) -> list[Ticket]:
        async with self._autocommit.connect() as conn:
            rows = (await conn.execute(statement(sql, "last_error"), params)).all()
        return [ticket_of(row) for row in rows if row.status != JobStatus.CANCELED]
