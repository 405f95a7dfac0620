"""Every job state change, as compare-and-set SQL: the row decides, a lost race returns nothing.

Each UPDATE names the status it expects (``shared.domain.LEGAL`` lists the moves) and, for a
worker's writes, the lease id it was given at claim time (the fencing token) and a lease that
has not run out: a worker whose lease expired can no longer complete, fail or extend its job. Statements work
on sets of jobs so that submit, claim, heartbeat and completion cost one round trip per batch.
All times come from the database clock (``now()``).
"""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeAlias

import msgspec
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlmodel import col, select

from shared.credentials import hash_secret, new_secret
from shared.db import raw
from shared.db.models import ApiClient, Job
from shared.domain import CANCELABLE, RETRYABLE_BY_API, TERMINAL, JobStatus
from shared.errors import UndeclaredQueue
from shared.messaging import Ticket


@functools.cache
def _sql(text: str, *json_columns: str) -> sa.TextClause | sa.TextualSelect:
    """A textual statement, built once per distinct text: building one parses its bind
    parameters, which costs more than running a small statement."""
    clause = sa.text(text)
    return clause.columns(**dict.fromkeys(json_columns, sa.JSON)) if json_columns else clause


JOB_COLUMNS = ", ".join(c.name for c in Job.metadata.tables["jobs"].columns)


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


#: A row of ``jobs`` with its columns as attributes (the names ``Job`` declares). Reads hand
#: out rows, not ``Job`` instances: building an ORM instance costs ~100 µs a row, more than
#: the query, and the API answers a batch submit with 1,000 of them.
JobRow: TypeAlias = sa.Row[Any]


def _ticket(row: sa.Row[Any]) -> Ticket:
    m = row._mapping
    dead = m["status"] == JobStatus.DEAD
    reason = None
    if dead:
        err = m["last_error"] or {}
        reason = f"{err.get('type', 'dead')}: {err.get('message', '')}"
    return Ticket(
        job_id=m["id"],
        type=m["type"],
        attempt=m["attempts"],
        queue=m["queue"],
        priority=m["priority"],
        traceparent=m["traceparent"],
        dead=dead,
        reason=reason,
        tenant=m["tenant"],
    )


TICKET_COLUMNS = "id, type, attempts, queue, priority, traceparent, status, last_error, tenant"


#: Moves queued jobs to running; see ``JobStore.claim``. ``$1`` ids, ``$2`` lease ids,
#: ``$3`` lease ids of earlier tries, ``$4`` lease seconds.
CLAIM = """
    UPDATE jobs j SET status = 'running',
        attempts = CASE WHEN j.status = 'queued' THEN j.attempts + 1 ELSE j.attempts END,
        started_at = CASE WHEN j.status = 'queued' THEN now() ELSE j.started_at END,
        lease_id = CASE WHEN j.status = 'queued' THEN v.lease ELSE j.lease_id END,
        lease_expires_at = now() + make_interval(secs => $4::float8),
        updated_at = now(), published_at = coalesce(j.published_at, now())
    FROM unnest($1::uuid[], $2::uuid[]) AS v(id, lease)
    WHERE j.id = v.id
      AND j.id IN (SELECT id FROM jobs
                   WHERE id = ANY($1::uuid[]) AND status IN ('queued', 'running')
                   ORDER BY id FOR UPDATE)
      AND (j.status = 'queued' OR (j.status = 'running' AND j.lease_id = ANY($3::uuid[])))
    RETURNING j.id, j.type, j.queue, j.priority, j.payload::text, j.attempts, j.max_attempts,
        j.timeout_seconds, j.lease_id, j.retry_backoff_seconds, j.retry_backoff_max_seconds,
        j.traceparent, j.tenant
"""


def _claimed(row: Any) -> Claimed:
    values = list(row)
    values[4] = _json.decode(values[4])  # the payload
    return Claimed(*values)


_json = msgspec.json.Decoder()


class JobStore:
    """The jobs table's writes and reads, on an async engine."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        # Single statements run in autocommit: no BEGIN and COMMIT round trips per batch.
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")

    # -- outbox -------------------------------------------------------------------------

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
                _sql("""
                    UPDATE jobs SET published_at = now()
                    WHERE id IN (SELECT j.id FROM jobs j
                                 JOIN unnest(CAST(:ids AS uuid[]), CAST(:attempts AS int[]))
                                      AS t(id, attempt) ON j.id = t.id AND j.attempts = t.attempt
                                 WHERE j.status IN ('queued', 'dead') AND j.published_at IS NULL
                                 FOR UPDATE OF j SKIP LOCKED)
                """),
                {"ids": [t.job_id for t in tickets], "attempts": [t.attempt for t in tickets]},
            )

    # -- worker -------------------------------------------------------------------------

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
                    _sql("""
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
        self, job: Claimed, status: JobStatus, delay_seconds: float, error: dict[str, str]
    ) -> Ticket | None:
        """Record a failed attempt as ``retrying`` (due after the delay) or ``dead``.

        Returns the dead-letter ticket for a dead job, ``None`` otherwise or if the lease
        was stale (nothing written then).
        """
        err = json.dumps({**error, "attempt": job.attempts})
        async with self._autocommit.connect() as conn:
            row = (
                await conn.execute(
                    _sql(
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
                        updated_at = now()
                    WHERE id = :id AND lease_id = :lease AND status = 'running'
                      AND lease_expires_at > now()
                    RETURNING {TICKET_COLUMNS}
                """,
                        "last_error",
                    ),
                    {
                        "status": str(status),
                        "err": err,
                        "delay": delay_seconds,
                        "id": job.id,
                        "lease": job.lease_id,
                    },
                )
            ).first()
        if row is None or row.status != JobStatus.DEAD:
            return None
        return _ticket(row)

    async def release(self, job: Claimed) -> Ticket | None:
        """Hand a held job back to the queue without counting the attempt (graceful
        shutdown); returns its new ticket, or ``None`` if the lease was already lost or a
        cancel was requested (the job is canceled instead)."""
        row = await self._finish_running(
            job,
            "status = CASE WHEN cancel_requested THEN 'canceled' ELSE 'queued' END,"
            " finished_at = CASE WHEN cancel_requested THEN now() END,"
            " attempts = attempts - 1, dispatched_at = now(), published_at = NULL,"
            " started_at = NULL",
        )
        return None if row is None or row.status == JobStatus.CANCELED else _ticket(row)

    async def cancel_running(self, job: Claimed) -> bool:
        """Honour a cancel request on a job this worker holds."""
        row = await self._finish_running(job, "status = 'canceled', finished_at = now()")
        return row is not None

    async def _finish_running(self, job: Claimed, assignments: str) -> sa.Row[Any] | None:
        async with self._autocommit.connect() as conn:
            row = (
                await conn.execute(
                    _sql(
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

    # -- scheduler ----------------------------------------------------------------------

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
        (canceled if a cancel was requested)."""
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
                published_at = NULL, updated_at = now()
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
                        _sql("""
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
            rows = (await conn.execute(_sql(sql, "last_error"), params)).all()
        return [_ticket(row) for row in rows if row.status != JobStatus.CANCELED]

    # -- API reads and commands -----------------------------------------------------------

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
        """Newest first, keyset-paginated on the time-ordered id; returns the page and whether
        more may follow.

        A page holds at most ``limit`` jobs, and ends with the job that takes their JSON
        (payload, result, errors) to ``max_bytes`` or past it: 500 jobs with 256 KiB payloads
        would be a page of 128 MiB. The database sizes the candidates and sends only the jobs
        kept.
        """
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
        candidates = q.order_by(col(Job.id).desc()).limit(limit).subquery()
        payload, *rest = (
            sa.func.coalesce(sa.func.octet_length(sa.cast(candidates.c[name], sa.Text)), 0)
            for name in ("payload", "result", "errors", "last_error")
        )
        size = sum(rest, start=payload)
        sized = sa.select(
            candidates,
            (sa.func.sum(size).over(order_by=candidates.c.id.desc()) - size).label("before"),
            sa.func.count().over().label("candidates"),
        ).subquery()
        page = (
            sa.select(*(sized.c[c.name] for c in candidates.c), sized.c.candidates)
            .where(sized.c.before < sa.literal(max_bytes, sa.BigInteger))
            .order_by(sized.c.id.desc())
        )
        async with self._autocommit.connect() as conn:
            rows: list[JobRow] = list(await conn.execute(page))
        more = bool(rows) and (len(rows) == limit or len(rows) < int(rows[0].candidates))
        return rows, more

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
            declared = await conn.execute(
                _sql("SELECT 1 FROM queues WHERE name = :queue FOR KEY SHARE"),
                {"queue": job.queue},
            )
            if declared.first() is None:
                raise UndeclaredQueue(job.queue)
            rows = (
                await conn.execute(
                    _sql(
                        f"""
                UPDATE jobs SET status = 'queued', attempts = 0, cancel_requested = false,
                    run_at = now(), finished_at = NULL, started_at = NULL, result = NULL,
                    dispatched_at = now(), published_at = NULL, updated_at = now()
                WHERE id = :id RETURNING {TICKET_COLUMNS}
            """,
                        "last_error",
                    ),
                    {"id": job_id},
                )
            ).all()
            return await _get(conn, tenant, job_id), _ticket(rows[0])

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
            await conn.execute(_sql("SELECT 1"))


async def _get(
    conn: AsyncConnection, tenant: str, job_id: uuid.UUID, lock: bool = False
) -> JobRow | None:
    q = select(Job).where(col(Job.id) == job_id, col(Job.tenant) == tenant)
    if lock:
        q = q.with_for_update()
    row = (await conn.execute(q)).first()
    return row


@dataclass(frozen=True, slots=True)
class ClientGrant:
    """An active client's row as the per-request check needs it."""

    secret_hash: str
    tenant: str
    scopes: frozenset[str]


def _active_client(client_id: uuid.UUID) -> tuple[Any, ...]:
    return (
        col(ApiClient.id) == client_id,
        col(ApiClient.revoked_at).is_(None),
        sa.or_(col(ApiClient.expires_at).is_(None), col(ApiClient.expires_at) > sa.func.now()),
    )


#: What the token endpoint reads of a client: id, tenant, scopes, secret_hash, expires_at and
#: revoked_at.
ClientCredentials: TypeAlias = sa.Row[
    uuid.UUID, str, list[str], str, datetime | None, datetime | None
]


class ClientStore:
    """API clients: created with a hashed secret, looked up at token time, revoked."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        # Lookups on every request run in autocommit: one round trip, no BEGIN and ROLLBACK.
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")

    async def create(self, client: ApiClient) -> ApiClient:
        async with self.engine.begin() as conn:
            await conn.execute(sa.insert(ApiClient).values(**client.model_dump(exclude_none=True)))
        return client

    async def register(
        self,
        name: str,
        tenant: str,
        scopes: Sequence[str],
        expires_at: datetime | None = None,
    ) -> tuple[ApiClient, str]:
        """A new client with a fresh secret: the row (holding only the secret's hash) and the
        secret, to be shown once."""
        secret = new_secret()
        client = ApiClient(
            id=uuid.uuid4(),
            name=name,
            tenant=tenant,
            scopes=sorted(set(scopes)),
            secret_hash=hash_secret(secret),
            expires_at=expires_at,
        )
        return await self.create(client), secret

    async def get(self, client_id: uuid.UUID) -> ApiClient | None:
        async with self.engine.connect() as conn:
            q = select(ApiClient).where(col(ApiClient.id) == client_id)
            row = (await conn.execute(q)).first()
        return None if row is None else ApiClient.model_validate(dict(row._mapping))

    async def credentials(self, client_id: uuid.UUID) -> ClientCredentials | None:
        """What the token endpoint checks, as a plain row: building an ``ApiClient`` would
        cost time only when the id exists, telling a guesser which ids do."""
        q = sa.select(
            col(ApiClient.id),
            col(ApiClient.tenant),
            col(ApiClient.scopes),
            col(ApiClient.secret_hash),
            col(ApiClient.expires_at),
            col(ApiClient.revoked_at),
        ).where(col(ApiClient.id) == client_id)
        async with self._autocommit.connect() as conn:
            return (await conn.execute(q)).first()

    async def list(self) -> list[ApiClient]:
        async with self.engine.connect() as conn:
            q = select(ApiClient).order_by(col(ApiClient.created_at))
            return [ApiClient.model_validate(dict(r._mapping)) for r in await conn.execute(q)]

    async def revoke(self, client_id: uuid.UUID) -> bool:
        async with self.engine.begin() as conn:
            result = await conn.execute(
                sa.update(ApiClient)
                .where(col(ApiClient.id) == client_id, col(ApiClient.revoked_at).is_(None))
                .values(revoked_at=sa.func.now())
            )
            return bool(result.rowcount)

    async def grants(self, client_ids: Sequence[uuid.UUID]) -> Sequence[ClientGrant | None]:
        """What each active (not revoked, not expired) client may do, with its secret's hash;
        ``None`` for an unknown, revoked or expired one.

        Checked on every authenticated request (the API gathers the requests of one moment
        into one lookup), so revocation and rotation take effect at once on every API
        replica, and a token can claim no tenant or scope beyond its client's row.
        """
        async with raw.connection(self.engine) as conn:
            rows = await conn.fetch(
                """
                SELECT id, secret_hash, tenant, scopes FROM api_clients
                WHERE id = ANY($1::uuid[]) AND revoked_at IS NULL
                  AND (expires_at IS NULL OR expires_at > now())
                """,
                list(set(client_ids)),
            )
        found = {row[0]: ClientGrant(row[1], row[2], frozenset(row[3])) for row in rows}
        return [found.get(i) for i in client_ids]

    async def rotate(self, client_id: uuid.UUID) -> tuple[ApiClient, str] | None:
        """Give an active client a fresh secret: the row and the secret, to be shown once;
        ``None`` if the client is unknown, revoked or expired."""
        secret = new_secret()
        q = (
            sa.update(ApiClient)
            .where(*_active_client(client_id))
            .values(secret_hash=hash_secret(secret))
            .returning(*ApiClient.__table__.columns)  # type: ignore[attr-defined]
        )
        async with self.engine.begin() as conn:
            row = (await conn.execute(q)).first()
        return None if row is None else (ApiClient.model_validate(dict(row._mapping)), secret)

    async def any_admin(self) -> bool:
        async with self.engine.connect() as conn:
            q = (
                select(ApiClient.id)
                .where(
                    col(ApiClient.scopes).contains(["admin"]), col(ApiClient.revoked_at).is_(None)
                )
                .limit(1)
            )
            return (await conn.execute(q)).first() is not None
