"""What the API returns, as typed structs (decoded by msgspec; fields the server adds later are
ignored, so an older client keeps working)."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

import msgspec


class JobStatus(StrEnum):
    """A job's state (docs/design.md §2 of the server): the last three are final."""

    SCHEDULED = "scheduled"
    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    DEAD = "dead"
    CANCELED = "canceled"

    @property
    def is_terminal(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.DEAD, JobStatus.CANCELED)


class JobProgress(msgspec.Struct, frozen=True):
    """What a running job last reported (``ctx.progress``), and when."""

    fraction: float
    message: str = ""
    at: datetime | None = None


class Job(msgspec.Struct, kw_only=True, frozen=True):
    """One job as the API last reported it."""

    id: uuid.UUID
    type: str
    queue: str
    status: JobStatus
    payload: Any
    priority: int
    attempts: int
    max_attempts: int
    timeout_seconds: int
    run_at: datetime
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    result: Any = None
    last_error: Any = None
    errors: list[Any] = msgspec.field(default_factory=list)
    idempotency_key: str | None = None
    cancel_requested: bool = False
    trace_id: str | None = None
    progress: JobProgress | None = None


class JobPage(msgspec.Struct, frozen=True):
    items: list[Job]
    next_cursor: str | None = None


class Batch(msgspec.Struct, frozen=True):
    items: list[Job]


class Queue(msgspec.Struct, kw_only=True, frozen=True):
    """A declared queue: its settings and the caller's jobs in it by status."""

    name: str
    max_attempts: int
    timeout_seconds: int
    description: str = ""
    counts: dict[str, int] = msgspec.field(default_factory=dict)


class QueueList(msgspec.Struct, frozen=True):
    items: list[Queue]


class Lease(msgspec.Struct, kw_only=True, frozen=True):
    """A job an HTTP worker now holds until ``lease_expires_at``."""

    id: uuid.UUID
    type: str
    queue: str
    priority: int
    payload: Any
    attempt: int
    max_attempts: int
    timeout_seconds: int
    lease_id: uuid.UUID
    lease_expires_at: datetime
    tenant: str
    traceparent: str | None = None


class LeaseList(msgspec.Struct, frozen=True):
    items: list[Lease]


class Heartbeat(msgspec.Struct, frozen=True):
    lease_seconds: float
    cancel_requested: bool


class JobType(msgspec.Struct, kw_only=True, frozen=True):
    """A job type a worker serves: its payload's JSON Schema and its defaults. ``tenant`` is
    set when a tenant's HTTP workers registered it (for that tenant alone)."""

    name: str
    schema: dict[str, Any] = msgspec.field(default_factory=dict)
    defaults: dict[str, Any] = msgspec.field(default_factory=dict)
    last_seen: datetime
    served: bool
    tenant: str | None = None


class TypeList(msgspec.Struct, frozen=True):
    items: list[JobType]


class Token(msgspec.Struct, frozen=True):
    access_token: str
    expires_in: int
    token_type: str = "Bearer"
    scope: str = ""


class Problem(msgspec.Struct, frozen=True):
    """An ``application/problem+json`` body (RFC 9457) as the API writes it."""

    status: int = 0
    title: str = ""
    detail: str = ""
    errors: list[dict[str, Any]] = msgspec.field(default_factory=list)


class ReplayRecord(msgspec.Struct, kw_only=True, frozen=True):
    """One replay of a dead job: who (the token's subject), when, and what it changed."""

    id: uuid.UUID
    action_id: uuid.UUID
    actor: str
    at: datetime
    queue_before: str
    queue_after: str
    payload_replaced: bool
    payload_digest: str | None = None


class DeadLetter(msgspec.Struct, kw_only=True, frozen=True):
    """A dead job (or one replayed from dead), its errors in ``job.errors``, and its replays."""

    job: Job
    replays: list[ReplayRecord] = msgspec.field(default_factory=list)


class Replayed(msgspec.Struct, kw_only=True, frozen=True):
    id: uuid.UUID
    queue_before: str
    queue_after: str
    payload_replaced: bool


class Skipped(msgspec.Struct, kw_only=True, frozen=True):
    """Not replayed: ``not_found``, ``not_dead`` (with its ``status``) or
    ``queue_undeclared``."""

    id: uuid.UUID
    reason: str
    status: str | None = None


class Replay(msgspec.Struct, kw_only=True, frozen=True):
    """What a replay did; ``repeated``: its idempotency key named an earlier request, whose
    result this is."""

    action_id: uuid.UUID
    at: datetime
    repeated: bool = False
    replayed: list[Replayed] = msgspec.field(default_factory=list)
    skipped: list[Skipped] = msgspec.field(default_factory=list)


class Purge(msgspec.Struct, kw_only=True, frozen=True):
    """``matched``: dead jobs the filter matches; ``deleted``: those deleted (0 in a dry run)."""

    dry_run: bool
    matched: int
    deleted: int
    action_id: uuid.UUID | None = None
