"""The dashboard's reads beyond the API's (docs/design.md §5.9): what a tenant's queues
finished lately, and its jobs that failed lately. Each reads ranges of an index, bounded by
a window and (failures) a limit."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from shared.db import raw

if TYPE_CHECKING:
    import uuid

    from sqlalchemy.ext.asyncio import AsyncEngine

#: Jobs of tenant ``$1`` in the queues ``$2`` that finished ``succeeded`` or ``dead`` within
#: the last ``$3`` seconds, by queue and status: ranges of ``jobs_finished`` (queue, status,
#: finished_at), one per queue and status.
FINISHED = """
    SELECT queue, status, count(*) FROM jobs
    WHERE queue = ANY($2::text[]) AND status IN ('succeeded', 'dead')
      AND finished_at > now() - make_interval(secs => $3::float8) AND tenant = $1
    GROUP BY queue, status
"""

#: Jobs of tenant ``$1`` that failed within the last ``$2`` seconds, newest first, at most
#: ``$3``: those that died (a range of ``jobs_dead``, read backwards) and those waiting out a
#: retry's backoff (``jobs_tenant_status_id``: live jobs, few), each bounded by the limit.
FAILURES = """
    (SELECT id, type, queue, status, attempts, max_attempts, last_error, finished_at AS at
     FROM jobs WHERE tenant = $1 AND status = 'dead'
       AND finished_at > now() - make_interval(secs => $2::float8)
     ORDER BY finished_at DESC, id DESC LIMIT $3)
    UNION ALL
    (SELECT id, type, queue, status, attempts, max_attempts, last_error, updated_at AS at
     FROM jobs WHERE tenant = $1 AND status = 'retrying'
       AND updated_at > now() - make_interval(secs => $2::float8)
     ORDER BY updated_at DESC LIMIT $3)
    ORDER BY at DESC LIMIT $3
"""


@dataclass(frozen=True, slots=True)
class Failure:
    """A job whose last attempt failed: it waits for a retry, or is dead."""

    id: uuid.UUID
    type: str
    queue: str
    status: str
    attempts: int
    max_attempts: int
    #: ``{"type", "message", "attempt", ...}`` as the attempt recorded it.
    last_error: Any
    #: When it died, or when its attempt failed.
    at: datetime


class DashboardStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def finished(
        self, tenant: str, queues: list[str], seconds: float
    ) -> dict[str, dict[str, int]]:
        """``{queue: {"succeeded": n, "dead": n}}`` finished within ``seconds``."""
        async with raw.connection(self.engine) as conn:
            rows = await conn.fetch(FINISHED, tenant, queues, seconds)
        out: dict[str, dict[str, int]] = {}
        for queue, status, n in rows:
            out.setdefault(queue, {})[status] = n
        return out

    async def failures(self, tenant: str, seconds: float, limit: int) -> list[Failure]:
        async with raw.connection(self.engine) as conn:
            rows = await conn.fetch(FAILURES, tenant, seconds, limit)
        return [Failure(**row) for row in rows]
