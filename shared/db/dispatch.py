"""The dispatcher's statements (docs/design.md §2.2): release held jobs within their limits,
tenant by tenant, and keep each queue's ``congested`` flag.

A pass runs in one transaction under one advisory lock, so at most one scheduler dispatches
at a time, and what it counts (jobs of a key, a tenant or a queue running or released) only
it increases: limits hold exactly, across any number of workers and schedulers. Everything
else that moves jobs can only lower those counts, or hold jobs again (``shared.db.holds``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from shared.db import raw
from shared.db.tickets import TICKET_COLUMNS, tickets_of
from shared.fairness import Allowance, Candidate, choose
from shared.messaging import Ticket

#: The advisory lock of the dispatcher (any constant no other part of jobq takes).
LOCK = "SELECT pg_try_advisory_xact_lock(7406118601)"

#: Every declared queue with its limit, its flag, whether it holds jobs, and (with a limit)
#: its jobs sent but not yet claimed, counted on ``jobs_ready`` as far as the limit.
QUEUES = """
    SELECT q.name, q.max_running, q.congested,
        EXISTS (SELECT 1 FROM jobs h WHERE h.queue = q.name AND h.status = 'queued' AND h.held),
        CASE WHEN q.max_running IS NOT NULL THEN
            (SELECT count(*) FROM (SELECT 1 FROM jobs r WHERE r.queue = q.name
                                   AND r.status = 'queued' AND NOT r.held
                                   LIMIT q.max_running) o) END
    FROM queues q ORDER BY q.name
"""

#: The declared queues' names.
NAMES = "SELECT name FROM queues ORDER BY name"

RUNNING = "SELECT count(*) FROM jobs WHERE status = 'running' AND queue = $1"

#: Up to ``$2`` held jobs of each tenant of queue ``$1``, each tenant in its order: the
#: tenants found by a loose scan of ``jobs_held``, each step jumping to the next name.
CANDIDATES = """
    WITH RECURSIVE t(tenant) AS (
        (SELECT tenant FROM jobs WHERE queue = $1 AND status = 'queued' AND held
         ORDER BY tenant LIMIT 1)
        UNION ALL
        SELECT (SELECT j.tenant FROM jobs j WHERE j.queue = $1 AND j.status = 'queued'
                AND j.held AND j.tenant > t.tenant ORDER BY j.tenant LIMIT 1)
        FROM t WHERE t.tenant IS NOT NULL)
    SELECT c.id, c.tenant, c.run_at, c.concurrency_key, c.concurrency_limit
    FROM t CROSS JOIN LATERAL (
        SELECT id, tenant, run_at, concurrency_key, concurrency_limit, priority FROM jobs
        WHERE queue = $1 AND status = 'queued' AND held AND tenant = t.tenant
        ORDER BY priority DESC, run_at, id LIMIT $2) c
    WHERE t.tenant IS NOT NULL
    ORDER BY c.tenant, c.priority DESC, c.run_at, c.id
"""

#: Jobs running or released, of each ``(tenant, key)`` given (``jobs_key_busy``).
KEY_BUSY = """
    SELECT j.tenant, j.concurrency_key, count(*) FROM jobs j
    JOIN unnest($1::text[], $2::text[]) AS k(tenant, ckey)
      ON j.tenant = k.tenant AND j.concurrency_key = k.ckey
    WHERE j.concurrency_key IS NOT NULL
      AND (j.status = 'running' OR (j.status = 'queued' AND NOT j.held))
    GROUP BY j.tenant, j.concurrency_key
"""

#: The limits of tenants ``$1``, their token buckets refilled to now, and how many of their
#: jobs run or are released.
TENANTS = """
    SELECT l.tenant, l.max_running,
        CASE WHEN l.starts_per_second IS NULL THEN NULL
             ELSE least(coalesce(l.burst, greatest(ceil(l.starts_per_second), 1)),
                        l.tokens + l.starts_per_second
                                   * EXTRACT(EPOCH FROM now() - l.refilled_at)::float8) END,
        (SELECT count(*) FROM jobs j WHERE j.tenant = l.tenant
           AND (j.status = 'running' OR (j.status = 'queued' AND NOT j.held)))
    FROM tenant_limits l WHERE l.tenant = ANY($1::text[])
"""

SPEND = """
    UPDATE tenant_limits l SET tokens = v.tokens, refilled_at = now()
    FROM unnest($1::text[], $2::float8[]) AS v(tenant, tokens) WHERE l.tenant = v.tenant
"""

RELEASE = f"""
    UPDATE jobs SET held = false, dispatched_at = now(), published_at = NULL, updated_at = now()
    WHERE id = ANY($1::uuid[]) AND status = 'queued' AND held
    RETURNING {TICKET_COLUMNS}
"""

FLAG = "UPDATE queues SET congested = $2 WHERE name = $1 AND congested <> $2"


@dataclass(frozen=True, slots=True)
class Pass:
    """One pass's outcome: the tickets to send, in order, and whether a queue still holds
    jobs (the next pass should come soon)."""

    tickets: list[Ticket]
    holding: bool


class DispatchStore:
    def __init__(self, engine: AsyncEngine, depth: int, batch: int) -> None:
        self.engine = engine
        #: ``JOBQ_FAIR_DEPTH`` (0: queues are never congested; limits still hold jobs).
        self.depth = depth
        #: Jobs one pass releases from one queue at most.
        self.batch = batch

    async def queues(self) -> list[str]:
        async with raw.connection(self.engine) as conn:
            return [row[0] for row in await conn.fetch(NAMES)]

    async def dispatch(self, ready: Mapping[str, int | None]) -> Pass:
        """One pass over every queue, given ``ready``: the tickets waiting in each queue's
        RabbitMQ queue (``None``: unknown, the broker did not answer; no room is assumed).
        Nothing if another scheduler is dispatching."""
        tickets: list[Ticket] = []
        holding = False
        async with raw.connection(self.engine) as conn, conn.transaction():
            if not await conn.fetchval(LOCK):
                return Pass([], False)
            for name, max_running, congested, holds, sent in await conn.fetch(QUEUES):
                waiting = ready.get(name)
                if holds:
                    holding = True
                    tickets += await self._queue(conn, name, max_running, sent, waiting)
                if self.depth and waiting is not None:
                    threshold = self.depth / 2 if congested else self.depth
                    await conn.execute(FLAG, name, waiting >= threshold)
        return Pass(tickets, holding)

    async def _queue(
        self,
        conn: Any,
        queue: str,
        max_running: int | None,
        sent: int | None,
        waiting: int | None,
    ) -> list[Ticket]:
        room = self.batch
        if self.depth:
            room = min(room, self.depth - (self.depth if waiting is None else waiting))
        if max_running is not None:
            running = await conn.fetchval(RUNNING, queue)
            room = min(room, max_running - running - (sent or 0))
        if room <= 0:
            return []
        candidates = [Candidate(*row) for row in await conn.fetch(CANDIDATES, queue, room)]
        keys = sorted({(c.tenant, c.key) for c in candidates if c.key is not None})
        busy = {
            (row[0], row[1]): row[2]
            for row in await conn.fetch(KEY_BUSY, [k[0] for k in keys], [k[1] for k in keys])
        }
        allowances = await _allowances(conn, sorted({c.tenant for c in candidates}))
        chosen = choose(candidates, room, busy, allowances)
        if not chosen:
            return []
        rated = [(t, a.tokens) for t, a in allowances.items() if a.tokens is not None]
        if rated:
            await conn.execute(SPEND, [t for t, _ in rated], [n for _, n in rated])
        rows = await conn.fetch(RELEASE, [c.id for c in chosen])
        position = {c.id: i for i, c in enumerate(chosen)}
        ordered = sorted(rows, key=lambda r: position[r["id"]])
        return tickets_of(SimpleNamespace(**dict(r)) for r in ordered)


async def _allowances(conn: Any, tenants: Sequence[str]) -> dict[str, Allowance]:
    out = {}
    for tenant, max_running, tokens, busy in await conn.fetch(TENANTS, list(tenants)):
        running = None if max_running is None else max_running - busy
        out[tenant] = Allowance(running, tokens)
    return out
