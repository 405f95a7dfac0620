"""The scheduler's statements on result callbacks, and the API's read of their record
(docs/design.md §10).

A delivery is owed by every row matching ``PENDING``; whatever finishes a job (a worker, an
HTTP worker, an expired lease, a cancel, a retry that finishes again) makes one so without
knowing about callbacks. ``claim`` takes due ones with ``FOR UPDATE SKIP LOCKED`` and pushes
their ``callback_next_at`` past the attempt's whole budget: several schedulers never send one
at once, and a crashed one's claim runs out. ``(callback_for, callback_attempts)`` fences the
write of an attempt's outcome, as a lease id fences a worker's.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import msgspec

from shared.db import raw
from shared.db.records import RECORD_COLUMNS, JobRecord

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

#: The rows that owe a delivery: the predicate of the index ``jobs_callbacks_pending``.
PENDING = """j.callback_url IS NOT NULL AND j.finished_at IS NOT NULL
    AND j.callback_done_at IS DISTINCT FROM j.finished_at"""
#: When a pending delivery is due (the index's key): at once for a finish not attempted yet,
#: else once its backoff (or its claim) runs out.
DUE = """coalesce(CASE WHEN j.callback_for IS NOT DISTINCT FROM j.finished_at
    THEN j.callback_next_at END, '-infinity'::timestamptz)"""

#: Up to ``$1`` due deliveries, claimed for ``$2`` seconds; the attempt count starts again for
#: a finish other than the one counted. Returns the job, the attempt, the URL and the secrets
#: that sign (the client's, and its previous one while the grace after a rotation lasts).
CLAIM = f"""
    UPDATE jobs j SET
        callback_attempts = CASE WHEN j.callback_for IS NOT DISTINCT FROM j.finished_at
                                 THEN j.callback_attempts + 1 ELSE 1 END,
        callback_for = j.finished_at,
        callback_next_at = now() + make_interval(secs => $2::float8)
    WHERE j.id IN (SELECT j.id FROM jobs j WHERE {PENDING} AND {DUE} <= now()
                   ORDER BY {DUE} LIMIT $1 FOR UPDATE SKIP LOCKED)
    RETURNING {RECORD_COLUMNS}, j.callback_attempts,
        (SELECT array_remove(ARRAY[c.callback_secret,
                                   CASE WHEN c.callback_previous_until > now()
                                        THEN c.callback_secret_previous END], NULL)
         FROM api_clients c WHERE c.id = j.client_id)
"""

#: An attempt's record (skipped if the job is gone), and its outcome on the job if the claim
#: ``($2 finished_at, $3 attempt)`` still holds it: ``$10`` done (delivered or given up), or
#: the next attempt at ``$11``.
RECORD = """
    WITH attempt AS (
        INSERT INTO callback_deliveries (id, job_id, event, finished_at, attempt, at,
            duration_seconds, status_code, error, response, outcome, next_attempt_at)
        SELECT $12, id, $4, $2, $3, $5, $6, $7, $8, $9, $13, $11 FROM jobs WHERE id = $1)
    UPDATE jobs SET callback_next_at = $11,
        callback_done_at = CASE WHEN $10::bool THEN callback_for ELSE callback_done_at END
    WHERE id = $1 AND callback_for = $2 AND callback_attempts = $3
"""

DELIVERIES = """
    SELECT d.id, d.event, d.finished_at, d.attempt, d.at, d.duration_seconds, d.status_code,
        d.error, d.response, d.outcome, d.next_attempt_at
    FROM jobs j LEFT JOIN LATERAL (
        SELECT * FROM callback_deliveries WHERE job_id = j.id ORDER BY id DESC LIMIT $3) d
      ON true
    WHERE j.id = $1 AND j.tenant = $2
    ORDER BY d.id
"""


@dataclass(frozen=True, slots=True)
class Due:
    """A delivery this scheduler holds: ``job`` as ``GET /v1/jobs/{id}`` shows it, POSTed to
    its ``callback_url``, signed with ``secrets`` (none: the client that submitted it is gone)."""

    job: JobRecord
    attempt: int
    secrets: list[str]


class Delivery(msgspec.Struct, frozen=True):
    """One attempt to deliver a finished job to its ``callback_url`` (a row of
    ``callback_deliveries``, as ``GET /v1/jobs/{id}/deliveries`` lists it): the finish it
    delivered (``event``, ``finished_at``), the receiver's status code (or why there was
    none) and the start of its answer, and what followed: ``delivered``, ``retrying`` at
    ``next_attempt_at``, or ``gave_up``."""

    id: uuid.UUID
    event: str
    finished_at: datetime
    attempt: int
    at: datetime
    duration_seconds: float
    status_code: int | None
    error: str | None
    response: str | None
    outcome: str
    next_attempt_at: datetime | None


class CallbackStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def claim(self, limit: int, claim_seconds: float) -> list[Due]:
        """Claim up to ``limit`` due deliveries for ``claim_seconds``."""
        async with raw.connection(self.engine) as conn:
            rows = await conn.fetch(CLAIM, limit, claim_seconds)
        n = len(rows[0]) - 2 if rows else 0
        return [Due(JobRecord.of(row[:n]), row[n], list(row[n + 1] or ())) for row in rows]

    async def record(self, job_id: uuid.UUID, attempt: Delivery) -> bool:
        """Record ``attempt`` and, if the claim still holds the job, its outcome; returns
        whether it did (``False``: the claim ran out and another scheduler took the delivery)."""
        done = attempt.outcome != "retrying"
        args: list[Any] = [
            job_id, attempt.finished_at, attempt.attempt, attempt.event, attempt.at,
            attempt.duration_seconds, attempt.status_code, attempt.error, attempt.response,
            done, attempt.next_attempt_at, attempt.id, attempt.outcome,
        ]  # fmt: skip
        async with raw.connection(self.engine) as conn:
            status = await conn.execute(RECORD, *args)
        return str(status).split()[-1] == "1"

    async def deliveries(self, tenant: str, job_id: uuid.UUID, limit: int) -> list[Delivery] | None:
        """The newest ``limit`` attempts to deliver the tenant's job, oldest first; ``None``
        if the tenant has no such job."""
        async with raw.connection(self.engine) as conn:
            rows = await conn.fetch(DELIVERIES, job_id, tenant, limit)
        if not rows:
            return None
        return [Delivery(*row) for row in rows if row[0] is not None]
