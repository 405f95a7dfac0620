"""Dead letters as a resource: a tenant's ``dead`` jobs, read, replayed and purged
(docs/design.md §8).

PostgreSQL is the truth: a dead letter is a ``jobs`` row with status ``dead``, its ``errors``
the history of its attempts; the copies in the broker's ``jobq.dead`` are for operators. Reads
walk the partial index ``jobs_dead`` (tenant, finished_at, id; migration 0011) backwards. A
replay is ``JobStore.retry``'s move (``shared.db.jobs.requeue``) with the edits asked for; it
and its audit rows commit together, and each job it moves is locked first and moved only while
it is still dead, so no job is replayed twice. Callers other than the API (a dashboard) use
``DeadLetterStore`` as it is, then send the tickets it returns.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlmodel import col, select

from shared.db.jobs import declared, read_page, requeue
from shared.db.models import DeadLetterReplay, Job
from shared.db.sql import JobRow, statement
from shared.db.tickets import ticket_of
from shared.domain import JobStatus
from shared.errors import IdempotencyKeyReused, UndeclaredQueue
from shared.ids import uuid7
from shared.messaging import Ticket

#: Rows one statement of a purge deletes (each batch commits on its own).
PURGE_BATCH = 1000


@dataclass(frozen=True, slots=True)
class DeadFilter:
    """Which dead jobs of ``tenant``: by queue, type, error class (``last_error->>'type'``)
    and when they died (``since`` inclusive, ``until`` exclusive)."""

    tenant: str
    queue: str | None = None
    type: str | None = None
    error: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def conditions(self) -> list[Any]:
        where: list[Any] = [col(Job.tenant) == self.tenant, col(Job.status) == JobStatus.DEAD]
        if self.queue is not None:
            where.append(col(Job.queue) == self.queue)
        if self.type is not None:
            where.append(col(Job.type) == self.type)
        if self.error is not None:
            where.append(col(Job.last_error)["type"].astext == self.error)
        if self.since is not None:
            where.append(col(Job.finished_at) >= self.since)
        if self.until is not None:
            where.append(col(Job.finished_at) < self.until)
        return where

    def described(self) -> dict[str, Any]:
        """As the audit records it (JSON)."""
        return {
            k: v.isoformat() if isinstance(v, datetime) else v
            for k, v in asdict(self).items()
            if v is not None and k != "tenant"
        }


@dataclass(frozen=True, slots=True)
class Edits:
    """What a replay changes besides the attempt budget: the queue, the payload (JSON text,
    with the digest the audit keeps)."""

    queue: str | None = None
    payload_json: str | None = None
    payload_digest: str | None = None


@dataclass(frozen=True, slots=True)
class Replayed:
    id: uuid.UUID
    queue_before: str
    queue_after: str
    payload_replaced: bool


@dataclass(frozen=True, slots=True)
class Skipped:
    """A job asked for that was not replayed: ``not_found`` (unknown, or another tenant's),
    ``not_dead`` (with its ``status``: replayed already, say), ``queue_undeclared`` (its
    queue was deleted; replay it into another)."""

    id: uuid.UUID
    reason: str
    status: str | None = None


@dataclass(slots=True)
class ReplayOutcome:
    """What a replay request did; ``repeated``: its idempotency key named an earlier request,
    whose result this is (nothing was done now). ``tickets`` are to be sent."""

    action_id: uuid.UUID
    at: datetime
    replayed: list[Replayed]
    skipped: list[Skipped]
    repeated: bool = False
    tickets: list[Ticket] = field(default_factory=list)
    jobs: list[JobRow] = field(default_factory=list)

    def result(self) -> dict[str, Any]:
        """As the action row keeps it (JSON), to answer the same request again."""
        return {
            "replayed": [{**asdict(r), "id": str(r.id)} for r in self.replayed],
            "skipped": [{**asdict(s), "id": str(s.id)} for s in self.skipped],
        }

    @classmethod
    def of(cls, action_id: uuid.UUID, at: datetime, result: dict[str, Any]) -> ReplayOutcome:
        return cls(
            action_id,
            at,
            [Replayed(**{**r, "id": uuid.UUID(r["id"])}) for r in result.get("replayed", [])],
            [Skipped(**{**s, "id": uuid.UUID(s["id"])}) for s in result.get("skipped", [])],
            repeated=True,
        )


@dataclass(frozen=True, slots=True)
class Action:
    """Who asks for a replay or purge, and how it is recorded."""

    actor: str
    request: dict[str, Any]
    request_digest: str
    idempotency_key: str | None = None


class DeadLetterStore:
    """Reads, replays and purges a tenant's dead jobs, and records who did what."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")

    async def list(
        self,
        where: DeadFilter,
        *,
        limit: int,
        max_bytes: int,
        after: tuple[datetime, uuid.UUID] | None = None,
    ) -> tuple[list[JobRow], bool]:
        """The jobs that died last first, after the one ``after`` names (keyset on
        ``finished_at, id``); the page and whether more may follow (``read_page``)."""
        q = select(Job).where(*where.conditions())
        if after is not None:
            q = q.where(sa.tuple_(col(Job.finished_at), col(Job.id)) < sa.tuple_(*after))
        return await read_page(self._autocommit, q, ("finished_at", "id"), limit, max_bytes)

    async def get(self, tenant: str, job_id: uuid.UUID) -> tuple[JobRow | None, Sequence[Any]]:
        """A job of ``tenant`` that is dead or was replayed from dead, with its replays
        (oldest first); ``(None, [])`` for any other job."""
        async with self._autocommit.connect() as conn:
            job = (
                await conn.execute(
                    select(Job).where(col(Job.id) == job_id, col(Job.tenant) == tenant)
                )
            ).first()
            if job is None:
                return None, []
            replays = list(
                await conn.execute(
                    select(DeadLetterReplay)
                    .where(
                        col(DeadLetterReplay.job_id) == job_id,
                        col(DeadLetterReplay.tenant) == tenant,
                    )
                    .order_by(col(DeadLetterReplay.at), col(DeadLetterReplay.id))
                )
            )
        if job.status != JobStatus.DEAD and not replays:
            return None, []
        return job, replays

    async def replay(
        self,
        where: DeadFilter,
        ids: Sequence[uuid.UUID] | None,
        limit: int,
        edits: Edits,
        action: Action,
    ) -> ReplayOutcome:
        """Move dead jobs of ``where.tenant`` back to ``queued`` with a fresh attempt budget:
        those ``ids`` name, or the ``limit`` that died last of those ``where`` matches. One
        transaction moves them and records the request and each job moved.

        Raises ``UndeclaredQueue`` if ``edits.queue`` is not declared, and
        ``IdempotencyKeyReused`` if the action's key named another request. The key's first
        request's outcome is returned (``repeated``) when it named this one.
        """
        async with self.engine.begin() as conn:
            started = await _begin_action(conn, where.tenant, "replay", action)
            if isinstance(started, ReplayOutcome):
                return started
            action_id, at = started
            if edits.queue is not None and not await declared(conn, [edits.queue]):
                raise UndeclaredQueue(edits.queue)
            found = await _lock(conn, where, ids, limit)
            targets = {row.id: edits.queue or row.queue for row in found}
            open_queues = await declared(conn, targets.values())
            skipped = [Skipped(i, "not_found") for i in ids or () if i not in targets]
            movable: list[Any] = []
            for row in found:
                if row.status != JobStatus.DEAD:
                    skipped.append(Skipped(row.id, "not_dead", row.status))
                elif targets[row.id] not in open_queues:
                    skipped.append(Skipped(row.id, "queue_undeclared"))
                else:
                    movable.append(row)
            moved = await requeue(
                conn, [r.id for r in movable], edits.queue, edits.payload_json
            ) if movable else []  # fmt: skip
            replayed = [
                Replayed(r.id, r.queue, targets[r.id], edits.payload_json is not None)
                for r in movable
            ]
            outcome = ReplayOutcome(action_id, at, replayed, skipped)
            await _audit_replays(conn, where.tenant, action, action_id, replayed, edits)
            await _finish_action(conn, action_id, outcome.result())
        outcome.jobs = sorted(moved, key=lambda r: r.id)
        outcome.tickets = [ticket_of(r) for r in outcome.jobs]
        return outcome

    async def count(self, where: DeadFilter) -> int:
        """How many dead jobs ``where`` matches (a purge's dry run)."""
        q = sa.select(sa.func.count()).select_from(Job).where(*where.conditions())
        async with self._autocommit.connect() as conn:
            return int((await conn.execute(q)).scalar_one())

    async def purge(self, where: DeadFilter, action: Action) -> tuple[uuid.UUID, int]:
        """Delete the dead jobs ``where`` matches that died before the purge began, in batches
        of ``PURGE_BATCH`` rows, each committed with its count added to the purge's record;
        returns the record's id and how many were deleted."""
        async with self.engine.begin() as conn:
            started = await _begin_action(conn, where.tenant, "purge", action)
            assert not isinstance(started, ReplayOutcome)  # a purge carries no key
            action_id, at = started
        bounded = DeadFilter(**{**asdict(where), "until": min(where.until or at, at)})
        doomed = (
            sa.select(col(Job.id))
            .where(*bounded.conditions())
            .limit(PURGE_BATCH)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        gone = sa.delete(Job).where(col(Job.id).in_(doomed)).returning(col(Job.id)).cte("gone")
        count = sa.select(sa.func.count()).select_from(gone).scalar_subquery()
        step = statement("""
            UPDATE dead_letter_actions
            SET result = jsonb_build_object('deleted', (result->>'deleted')::bigint + :n)
            WHERE id = :id RETURNING (result->>'deleted')::bigint
        """)
        deleted = 0
        while True:
            async with self.engine.begin() as conn:
                n = int((await conn.execute(sa.select(count))).scalar_one())
                if n:
                    deleted = int(
                        (await conn.execute(step, {"n": n, "id": action_id})).scalar_one()
                    )
            if n < PURGE_BATCH:
                return action_id, deleted


async def _begin_action(
    conn: AsyncConnection, tenant: str, kind: str, action: Action
) -> tuple[uuid.UUID, datetime] | ReplayOutcome:
    """Record the request; with a key another request used first, that request's outcome
    (waiting for it to commit if it is in flight: the key's row is unique)."""
    row = (
        await conn.execute(
            statement(
                """
            INSERT INTO dead_letter_actions AS a
                (id, tenant, actor, action, idempotency_key, request_digest, request, result)
            VALUES (:id, :tenant, :actor, :action, :key, :digest, CAST(:request AS jsonb),
                    CAST(:result AS jsonb))
            ON CONFLICT (tenant, action, idempotency_key) WHERE idempotency_key IS NOT NULL
            DO NOTHING
            RETURNING id, at
        """
            ),
            {
                "id": uuid7(),
                "tenant": tenant,
                "actor": action.actor,
                "action": kind,
                "key": action.idempotency_key,
                "digest": action.request_digest,
                "request": _json(action.request),
                "result": '{"deleted": 0}' if kind == "purge" else "{}",
            },
        )
    ).first()
    if row is not None:
        return row.id, row.at
    first = (
        await conn.execute(
            statement(
                """
            SELECT id, at, request_digest, result FROM dead_letter_actions
            WHERE tenant = :tenant AND action = :action AND idempotency_key = :key
        """,
                "result",
            ),
            {"tenant": tenant, "action": kind, "key": action.idempotency_key},
        )
    ).one()
    if first.request_digest != action.request_digest:
        raise IdempotencyKeyReused(action.idempotency_key or "")
    return ReplayOutcome.of(first.id, first.at, first.result)


async def _lock(
    conn: AsyncConnection, where: DeadFilter, ids: Sequence[uuid.UUID] | None, limit: int
) -> list[Any]:
    """The jobs a replay names, locked: by id (whatever their status, to say why one is
    skipped; in id order, so concurrent replays of overlapping ids cannot deadlock), or the
    ``limit`` dead ones ``where`` matches that died last, passing over those another
    transaction holds."""
    q = sa.select(col(Job.id), col(Job.status), col(Job.queue))
    if ids is not None:
        q = q.where(col(Job.tenant) == where.tenant, col(Job.id).in_(ids)).order_by(col(Job.id))
        q = q.with_for_update()
    else:
        q = q.where(*where.conditions()).order_by(col(Job.finished_at).desc(), col(Job.id).desc())
        q = q.limit(limit).with_for_update(skip_locked=True)
    return list(await conn.execute(q))


async def _audit_replays(
    conn: AsyncConnection,
    tenant: str,
    action: Action,
    action_id: uuid.UUID,
    replayed: list[Replayed],
    edits: Edits,
) -> None:
    if not replayed:
        return
    await conn.execute(
        sa.insert(DeadLetterReplay),
        [
            {
                "id": uuid7(),
                "action_id": action_id,
                "job_id": r.id,
                "tenant": tenant,
                "actor": action.actor,
                "queue_before": r.queue_before,
                "queue_after": r.queue_after,
                "payload_replaced": r.payload_replaced,
                "payload_digest": edits.payload_digest if r.payload_replaced else None,
            }
            for r in replayed
        ],
    )


async def _finish_action(conn: AsyncConnection, action_id: uuid.UUID, result: Any) -> None:
    await conn.execute(
        statement("UPDATE dead_letter_actions SET result = CAST(:result AS jsonb) WHERE id = :id"),
        {"id": action_id, "result": _json(result)},
    )


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)
