"""``chaos.work``: the job the fault suite runs, loaded into workers with ``JOBQ_HANDLERS``.

Each execution is appended to ``chaos_executions`` before anything else (so the checker sees
runs that a crash cut short), then the payload's flags apply: ``kill`` ends the worker process
(every attempt), ``fail`` = ``always`` or ``once`` raises. The job's effect is written to
``chaos_effects`` only while its fencing token (the lease id) is current, checked and locked in
the same statement: a worker that lost its lease has ``applied = false`` recorded instead.
Both tables are written to the worker's own database, or to the one ``CHAOS_HANDLER_DSN``
names: a path of the handler's own, apart from its worker's (``tests.chaos.proxy``).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import asyncpg
from jobq import JobContext, handler

from shared.config import Settings

_pool: asyncpg.Pool | None = None
_pool_lock = asyncio.Lock()


async def _db() -> asyncpg.Pool:
    """One small pool per worker process, apart from the worker's own engine."""
    global _pool
    async with _pool_lock:
        if _pool is None:
            url = os.environ.get("CHAOS_HANDLER_DSN") or Settings.from_env().sync_database_url
            _pool = await asyncpg.create_pool(url, min_size=1, max_size=4, command_timeout=5)
    return _pool


EFFECT = """
INSERT INTO chaos_effects (job_id, lease_id, pid, applied)
SELECT $1, $2, $3, EXISTS (
    SELECT 1 FROM jobs WHERE id = $1 AND lease_id = $2 AND status = 'running' FOR SHARE)
RETURNING applied
"""


@handler("chaos.work")
async def work(payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    db = await _db()
    await db.execute(
        "INSERT INTO chaos_executions (job_id, attempt, lease_id, pid) VALUES ($1, $2, $3, $4)",
        ctx.job_id, ctx.attempt, ctx.lease_id, os.getpid(),
    )  # fmt: skip
    if payload.get("kill"):
        os._exit(137)
    await asyncio.sleep(float(payload.get("ms", 0)) / 1000)
    fail = payload.get("fail")
    if fail == "always" or (fail == "once" and ctx.attempt == 1):
        raise RuntimeError(f"injected failure ({fail}) at attempt {ctx.attempt}")
    applied = await db.fetchval(EFFECT, ctx.job_id, ctx.lease_id, os.getpid())
    return {"n": payload.get("n"), "applied": applied}
