"""Submitting jobs: the INSERT every accepted job goes through, on asyncpg (``shared.db.raw``).

One statement inserts any number of jobs, from one batch request or from many single requests
gathered by the API (docs/design.md §7). It locks the queue rows it names ``FOR KEY SHARE``
(``QueueStore.delete`` waits for it) and takes their settings for what a job leaves out.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import asyncpg

from shared.db import dependencies, raw
from shared.db.errors import UNDECLARED_QUEUE
from shared.db.holds import held
from shared.db.records import RECORD_COLUMNS, JobRecord
from shared.errors import IdempotencyKeyReused, UndeclaredQueue

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from shared.dependencies import Wants


@dataclass(frozen=True, slots=True)
class NewJob:
    """A validated submission, ready to insert."""

    id: uuid.UUID
    tenant: str
    type: str
    queue: str
    payload_json: str
    priority: int
    #: ``None``: the queue's setting.
    max_attempts: int | None
    timeout_seconds: int | None
    delay_seconds: float
    run_at: datetime | None
    idempotency_key: str | None
    retry_backoff_seconds: float | None
    retry_backoff_max_seconds: float | None
    traceparent: str | None
    #: The W3C ``tracestate`` that goes with ``traceparent`` (vendors' part of the context).
    tracestate: str | None = None
    #: A digest of the request, kept with an idempotency key to recognise its reuse.
    request_digest: str | None = None
    #: Its start when not the submit's (``queued``, or ``scheduled`` for later): ``waiting``
    #: or ``canceled``, as its dependencies decide (``shared.db.dependencies``).
    status: str | None = None
    #: At most ``concurrency_limit`` of the tenant's jobs with this key run at once.
    concurrency_key: str | None = None
    concurrency_limit: int | None = None
    #: The jobq client that submitted it (``None``: an external issuer's token).
    client_id: uuid.UUID | None = None
    #: Where the job is POSTed once it finishes (docs/design.md §10).
    callback_url: str | None = None


# By tenant and key, so concurrent statements (gathered ones mix tenants) take key conflicts in
# one order (no deadlock between them); of two jobs with one key, the first given is inserted.
# ``$22`` (strict): a job naming an undeclared queue fails the statement (a batch request is
# taken whole or not at all); otherwise that job alone is left out (single requests gathered
# into one statement). A queued job is held (``shared.db.holds``) by the same rule as any
# move to ``queued``: its key, its queue's limit or congestion, its tenant's limits.
INSERT = f"""
    WITH q AS (SELECT name, max_attempts, timeout_seconds FROM queues
               WHERE name = ANY($4::text[]) FOR KEY SHARE),
    v AS (SELECT *, coalesce(run_at, now() + make_interval(secs => delay)) AS at
          FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[],
                      $6::smallint[], $7::int[], $8::int[], $9::float8[], $10::timestamptz[],
                      $11::text[], $12::float8[], $13::float8[], $14::text[], $15::text[],
                      $16::text[], $17::text[], $18::text[], $19::int[], $20::uuid[],
                      $21::text[])
              WITH ORDINALITY
              AS v(id, tenant, type, queue, payload, priority, max_attempts, timeout_seconds,
                   delay, run_at, idem, rb, rbm, tp, ts, digest, status, ckey, climit, client,
                   callback, n)),
    r AS (SELECT v.*, q.name AS declared, q.max_attempts AS q_attempts,
              q.timeout_seconds AS q_timeout,
              coalesce(v.status, CASE WHEN v.at > now() THEN 'scheduled' ELSE 'queued' END) AS st,
              {held("v.queue", "v.ckey", "v.tenant")} AS hold
          FROM v LEFT JOIN q ON q.name = v.queue)
    INSERT INTO jobs AS j (id, tenant, type, queue, payload, priority, status, max_attempts,
        timeout_seconds, run_at, idempotency_key, retry_backoff_seconds,
        retry_backoff_max_seconds, traceparent, tracestate, request_digest, held,
        concurrency_key, concurrency_limit, client_id, callback_url, dispatched_at)
    SELECT r.id, r.tenant, r.type,
        CASE WHEN r.declared IS NULL THEN jobq_undeclared_queue(r.queue) ELSE r.queue END,
        r.payload::jsonb, r.priority, r.st, coalesce(r.max_attempts, r.q_attempts),
        coalesce(r.timeout_seconds, r.q_timeout), r.at, r.idem, r.rb, r.rbm, r.tp, r.ts,
        r.digest, r.st = 'queued' AND r.hold, r.ckey, r.climit, r.client, r.callback,
        CASE WHEN r.st = 'queued' AND NOT r.hold THEN now() END
    FROM r
    WHERE r.declared IS NOT NULL OR $22
    ORDER BY r.tenant, r.idem, r.n
    ON CONFLICT (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING {RECORD_COLUMNS}
"""

EXISTING = f"""
    SELECT {RECORD_COLUMNS} FROM jobs j
    JOIN unnest($1::text[], $2::text[]) AS k(tenant, idem)
      ON j.tenant = k.tenant AND j.idempotency_key = k.idem
"""

#: Per job: the job and whether this call created it, or why it was refused.
Outcome = tuple[JobRecord, bool] | Exception


class SubmitStore:
    """Inserts submitted jobs; the API's only write on the submit path."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def insert(self, jobs: Sequence[NewJob]) -> list[tuple[JobRecord, bool]]:
        """Insert the jobs of one request, all or none: each job with ``True`` if created,
        ``False`` if its idempotency key already named a job (returned instead).

        Raises ``UndeclaredQueue``, or ``IdempotencyKeyReused`` if a key names a job another
        request made; either way no job of the call is inserted.
        """
        # A batch with idempotency keys runs in a transaction: a key reused with another
        # request refuses it whole. A single job needs none: its one row conflicted.
        atomic = len(jobs) > 1 and any(j.idempotency_key for j in jobs)
        async with (
            raw.connection(self.engine) as conn,
            conn.transaction() if atomic else contextlib.nullcontext(),
        ):
            return await _insert_all(conn, jobs)

    async def insert_waiting(
        self, jobs: Sequence[NewJob], wants: Sequence[Wants]
    ) -> list[tuple[JobRecord, bool]]:
        """Insert the jobs of one request whose ``wants`` name dependencies, all or none, as
        ``insert`` does; each job starts ``waiting``, ``canceled`` or as submitted
        (``shared.db.dependencies``). Raises what ``insert`` does, and
        ``InvalidDependencies``."""
        async with raw.connection(self.engine) as conn, conn.transaction():
            statuses = await dependencies.named(conn, jobs[0].tenant, wants)
            started = dependencies.starting(jobs, wants, statuses)
            records = await _insert_all(conn, started)
            return await dependencies.link(conn, records, wants, statuses)

    async def insert_each(self, jobs: Sequence[NewJob]) -> list[Outcome]:
        """Insert jobs of separate requests in one statement, each standing alone: one job's
        undeclared queue or reused key refuses that job only."""
        async with raw.connection(self.engine) as conn:
            return await insert_on(conn, jobs)


async def insert_on(conn: Any, jobs: Sequence[NewJob]) -> list[Outcome]:
    """``insert_each`` on the caller's asyncpg connection, within its transaction: how a
    schedule's tick inserts its job (``shared.db.schedules``), exactly as a submit would."""
    return await _insert(conn, jobs, strict=False)


def _columns(jobs: Sequence[NewJob]) -> list[list[Any]]:
    return [
        [j.id for j in jobs],
        [j.tenant for j in jobs],
        [j.type for j in jobs],
        [j.queue for j in jobs],
        [j.payload_json for j in jobs],
        [j.priority for j in jobs],
        [j.max_attempts for j in jobs],
        [j.timeout_seconds for j in jobs],
        [j.delay_seconds for j in jobs],
        [j.run_at for j in jobs],
        [j.idempotency_key for j in jobs],
        [j.retry_backoff_seconds for j in jobs],
        [j.retry_backoff_max_seconds for j in jobs],
        [j.traceparent for j in jobs],
        [j.tracestate for j in jobs],
        [j.request_digest for j in jobs],
        [j.status for j in jobs],
        [j.concurrency_key for j in jobs],
        [j.concurrency_limit for j in jobs],
        [j.client_id for j in jobs],
        [j.callback_url for j in jobs],
    ]


async def _insert_all(conn: Any, jobs: Sequence[NewJob]) -> list[tuple[JobRecord, bool]]:
    """Every job inserted (or found by its key), or the first refusal raised."""
    outcomes = await _insert(conn, jobs, strict=True)
    refused = next((o for o in outcomes if isinstance(o, Exception)), None)
    if refused is not None:
        raise refused
    return [o for o in outcomes if not isinstance(o, Exception)]


async def _insert(conn: Any, jobs: Sequence[NewJob], *, strict: bool) -> list[Outcome]:
    try:
        rows = await conn.fetch(INSERT, *_columns(jobs), strict)
    except asyncpg.PostgresError as exc:
        if exc.sqlstate == UNDECLARED_QUEUE:
            raise UndeclaredQueue(getattr(exc, "detail", None) or "") from None
        raise
    created = {row[0]: JobRecord.of(row) for row in rows}
    keyed = [j for j in jobs if j.id not in created and j.idempotency_key is not None]
    existing: dict[tuple[str, str | None], JobRecord] = {}
    lookup_failed: Exception | None = None
    if keyed:
        try:
            found = await conn.fetch(
                EXISTING, [j.tenant for j in keyed], [j.idempotency_key for j in keyed]
            )
        except Exception as exc:
            # The created rows are committed: they are answered and published all the same;
            # only the jobs whose key named an earlier one fail with the lookup.
            lookup_failed = exc
        else:
            existing = {(j.tenant, j.idempotency_key): j for j in map(JobRecord.of, found)}
    outcomes: list[Outcome] = []
    for j in jobs:
        if j.id in created:
            outcomes.append((created[j.id], True))
        elif lookup_failed is not None and j.idempotency_key is not None:
            outcomes.append(lookup_failed)
        elif (original := existing.get((j.tenant, j.idempotency_key))) is None:
            # Left out for its queue (only when not strict): undeclared, or deleted meanwhile.
            outcomes.append(UndeclaredQueue(j.queue))
        elif original.request_digest not in (None, j.request_digest):
            outcomes.append(IdempotencyKeyReused(j.idempotency_key or ""))
        else:
            outcomes.append((original, False))
    return outcomes
