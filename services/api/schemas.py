"""Request and response bodies (msgspec Structs; unknown fields are refused)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

import msgspec
from msgspec import Meta, Struct

from shared.db.store import JobRow

NAME_PATTERN = r"^[a-z][a-z0-9_.:-]{0,63}$"
Name = Annotated[str, Meta(pattern=NAME_PATTERN, description="lower-case name")]
MAX_DELAY_SECONDS = 366 * 24 * 3600


class JobIn(Struct, forbid_unknown_fields=True):
    """A job to submit."""

    type: Name
    payload: Any = None
    queue: Name = "default"
    priority: Annotated[int, Meta(ge=0, le=9)] = 5
    max_attempts: Annotated[int, Meta(ge=1, le=100)] = 3
    timeout_seconds: Annotated[int, Meta(ge=1, le=7 * 24 * 3600)] = 300
    run_at: datetime | None = None
    delay_seconds: Annotated[float, Meta(ge=0, le=MAX_DELAY_SECONDS)] | None = None
    retry_backoff_seconds: Annotated[float, Meta(gt=0, le=86400)] | None = None
    retry_backoff_max_seconds: Annotated[float, Meta(gt=0, le=7 * 86400)] | None = None


IdempotencyKey = Annotated[str, Meta(min_length=1, max_length=255, pattern=r"^[\x21-\x7e]+$")]


class BatchJobIn(JobIn, forbid_unknown_fields=True):
    """A job within a batch; its idempotency key travels in the body."""

    idempotency_key: IdempotencyKey | None = None


class BatchIn(Struct, forbid_unknown_fields=True):
    jobs: Annotated[list[BatchJobIn], Meta(min_length=1)]


class JobOut(Struct):
    id: uuid.UUID
    type: str
    queue: str
    status: str
    payload: Any
    priority: int
    attempts: int
    max_attempts: int
    timeout_seconds: int
    run_at: datetime
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    result: Any
    last_error: Any
    errors: list[Any]
    idempotency_key: str | None
    cancel_requested: bool
    trace_id: str | None

    @classmethod
    def of(cls, job: JobRow) -> JobOut:
        return cls(
            id=job.id,
            type=job.type,
            queue=job.queue,
            status=str(job.status),
            payload=job.payload,
            priority=job.priority,
            attempts=job.attempts,
            max_attempts=job.max_attempts,
            timeout_seconds=job.timeout_seconds,
            run_at=job.run_at,
            created_at=job.created_at,
            updated_at=job.updated_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            result=job.result,
            last_error=job.last_error,
            errors=job.errors or [],
            idempotency_key=job.idempotency_key,
            cancel_requested=job.cancel_requested,
            trace_id=job.traceparent.split("-")[1] if job.traceparent else None,
        )


class JobList(Struct):
    items: list[JobOut]
    next_cursor: str | None


class BatchOut(Struct):
    items: list[JobOut]


class TokenOut(Struct):
    access_token: str
    token_type: str
    expires_in: int
    scope: str


class QueueOut(Struct):
    name: str
    ready: int | None
    unacked: int | None
    consumers: int | None
    counts: dict[str, int]


class QueueList(Struct):
    items: list[QueueOut]


def encoded_size(value: Any) -> tuple[str, int]:
    """The JSON text of a payload and its size in bytes."""
    raw = msgspec.json.encode(value)
    return raw.decode(), len(raw)
