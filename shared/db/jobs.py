"""The API's statements on jobs besides the submit: reads, cancel, retry, counts."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlmodel import col, select
from sqlmodel.sql.expression import SelectOfScalar

from shared.db.models import Job
from shared.db.sql import JobRow, statement
from shared.db.tickets import ticket_of
from shared.domain import CANCELABLE, RETRYABLE_BY_API, TERMINAL, JobStatus
from shared.errors import UndeclaredQueue
from shared.messaging import Ticket


class JobStore:
    """The API's reads of jobs and its commands on them (cancel, retry)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        # Single statements run in autocommit: no BEGIN and COMMIT round trips per batch.
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")

    async def get(self, tenant: str, job_id: uuid.UUID) -> JobRow | None:
        async with self._autocommit.connect() as conn:
            return await _get(conn, tenant, job_id)

    async def list(
        self,
        tenant: str,
        *,
        limit: int,
        max_bytes: int,
        before: uuid.UUID | None = None,
        status: JobStatus | None = None,
        type: str | None = None,
        queue: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
    ) -> tuple[list[JobRow], bool]:
        """Newest first, keyset-paginated on the time-ordered id (``read_page``); returns the
        page and whether more may follow."""
        q = select(Job).where(col(Job.tenant) == tenant)
        for column, value in ((Job.status, status), (Job.type, type), (Job.queue, queue)):
            if value is not None:
                q = q.where(col(column) == value)
        if created_after is not None:
            q = q.where(col(Job.created_at) >= created_after)
        if created_before is not None:
            q = q.where(col(Job.created_at) < created_before)
        if before is not None:
            q = q.where(col(Job.id) < before)
        return await read_page(self._autocommit, q, ("id",), limit, max_bytes)

    async def cancel(
        self, tenant: str, job_id: uuid.UUID
    ) -> tuple[JobStatus | None, JobRow | None]:
        """Cancel a waiting job at once; a running one gets a request its worker honours at
        the next heartbeat. Returns the status before and the job after (``None`` if
        unknown); a terminal job is left unchanged."""
        async with self.engine.begin() as conn:
            job = await _get(conn, tenant, job_id, lock=True)
            if job is None or job.status in TERMINAL:
                return (None if job is None else JobStatus(job.status)), job
            if job.status in CANCELABLE:
                values: dict[str, Any] = {
                    "status": JobStatus.CANCELED,
                    "finished_at": sa.func.now(),
                }
            else:
                values = {"cancel_requested": True}
            await conn.execute(
                sa.update(Job)
                .where(col(Job.id) == job_id)
                .values(**values, updated_at=sa.func.now())
            )
            return JobStatus(job.status), await _get(conn, tenant, job_id)

    async def retry(self, tenant: str, job_id: uuid.UUID) -> tuple[JobRow | None, Ticket | None]:
        """Re-queue a dead or canceled job with a fresh attempt budget; ``UndeclaredQueue``
        if its queue was deleted since."""
        async with self.engine.begin() as conn:
            job = await _get(conn, tenant, job_id, lock=True)
            if job is None or job.status not in RETRYABLE_BY_API:
                return job, None
            if not await declared(conn, [job.queue]):
                raise UndeclaredQueue(job.queue)
            [moved] = await requeue(conn, [job_id])
            return moved, ticket_of(moved)

    async def counts_by_queue(
        self, tenant: str | None, queue: str | None = None
    ) -> dict[str, dict[str, int]]:
        """``{queue: {status: count}}``, for one tenant or (admin) all, of every queue or one."""
        q = select(col(Job.queue), col(Job.status), sa.func.count()).group_by(
            col(Job.queue), col(Job.status)
        )
        if tenant is not None:
            q = q.where(col(Job.tenant) == tenant)
        if queue is not None:
            q = q.where(col(Job.queue) == queue)
        out: dict[str, dict[str, int]] = {}
        async with self._autocommit.connect() as conn:
            for name, status, n in (await conn.execute(q)).all():
                out.setdefault(name, {})[status] = n
        return out

    async def ping(self) -> None:
        async with self._autocommit.connect() as conn:
            await conn.execute(statement("SELECT 1"))


#: The columns of ``jobs`` holding JSON, decoded in rows read with textual statements.
JSON_COLUMNS = ("payload", "result", "last_error", "errors", "progress")

REQUEUE = """
    UPDATE jobs SET status = 'queued', attempts = 0, cancel_requested = false,
        run_at = now(), finished_at = NULL, started_at = NULL, result = NULL,
        dispatched_at = now(), published_at = NULL, updated_at = now(),
        queue = coalesce(CAST(:queue AS text), queue),
        payload = coalesce(CAST(:payload AS jsonb), payload)
    WHERE id = ANY(CAST(:ids AS uuid[]))
    RETURNING *
"""


async def requeue(
    conn: AsyncConnection,
    ids: Sequence[uuid.UUID],
    queue: str | None = None,
    payload_json: str | None = None,
) -> list[JobRow]:
    """The API's retry move (``RETRYABLE_BY_API`` -> ``queued`` with a fresh attempt budget,
    due now, its ticket owed), into ``queue`` and with the payload ``payload_json`` if given:
    ``retry`` and the dead-letter replay (``shared.db.dead_letters``) both make it. The caller
    holds the rows ``FOR UPDATE``, has checked their status, and holds their target queue
    ``FOR KEY SHARE`` (``declared``). Returns the rows as they are now."""
    rows = await conn.execute(
        statement(REQUEUE, *JSON_COLUMNS),
        {"ids": list(ids), "queue": queue, "payload": payload_json},
    )
    return list(rows)


async def declared(conn: AsyncConnection, names: Iterable[str]) -> set[str]:
    """Which of ``names`` are declared queues, held ``FOR KEY SHARE`` until the transaction
    ends (so ``QueueStore.delete`` waits for it, and then sees the jobs it moved there)."""
    rows = await conn.execute(
        statement("SELECT name FROM queues WHERE name = ANY(CAST(:names AS text[])) FOR KEY SHARE"),
        {"names": sorted(set(names))},
    )
    return set(rows.scalars())


async def read_page(
    source: AsyncEngine,
    q: SelectOfScalar[Job],
    keys: Sequence[str],
    limit: int,
    max_bytes: int,
) -> tuple[list[JobRow], bool]:
    """The page of jobs ``q`` selects, in descending order of the columns ``keys`` (a keyset:
    ``q`` holds the condition that starts after the previous page); returns it and whether more
    may follow.

    A page holds at most ``limit`` jobs, and ends with the job that takes their JSON
    (payload, result, errors) to ``max_bytes`` or past it: 500 jobs with 256 KiB payloads
    would be a page of 128 MiB. The database sizes the candidates and sends only the jobs
    kept.
    """
    order = [col(getattr(Job, key)).desc() for key in keys]
    candidates = q.order_by(*order).limit(limit).subquery()
    payload, *rest = (
        sa.func.coalesce(sa.func.octet_length(sa.cast(candidates.c[name], sa.Text)), 0)
        for name in ("payload", "result", "errors", "last_error")
    )
    size = sum(rest, start=payload)
    in_order = [candidates.c[key].desc() for key in keys]
    sized = sa.select(
        candidates,
        (sa.func.sum(size).over(order_by=in_order) - size).label("before"),
        sa.func.count().over().label("candidates"),
    ).subquery()
    page = (
        sa.select(*(sized.c[c.name] for c in candidates.c), sized.c.candidates)
        .where(sized.c.before < sa.literal(max_bytes, sa.BigInteger))
        .order_by(*(sized.c[key].desc() for key in keys))
    )
    async with source.connect() as conn:
        rows: list[JobRow] = list(await conn.execute(page))
    more = bool(rows) and (len(rows) == limit or len(rows) < int(rows[0].candidates))
    return rows, more


async def _get(
    conn: AsyncConnection, tenant: str, job_id: uuid.UUID, lock: bool = False
) -> JobRow | None:
    q = select(Job).where(col(Job.id) == job_id, col(Job.tenant) == tenant)
    if lock:
        q = q.with_for_update()
    row = (await conn.execute(q)).first()
    return row
