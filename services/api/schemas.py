"""Request and response bodies (msgspec Structs; unknown fields are refused)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal, cast

import msgspec
from msgspec import Meta, Struct

from services.api.broker_stats import BrokerFigures
from shared.config import NAME_PATTERN
from shared.credentials import TENANT_PATTERN
from shared.db.models import ApiClient, Queue
from shared.db.records import JobRecord
from shared.db.sql import JobRow

Name = Annotated[str, Meta(pattern=NAME_PATTERN, description="lower-case name")]
MaxAttempts = Annotated[int, Meta(ge=1, le=100)]
TimeoutSeconds = Annotated[int, Meta(ge=1, le=7 * 24 * 3600)]
MAX_DELAY_SECONDS = 366 * 24 * 3600
#: Litestar 2.25 leaves a bound of 0 out of the OpenAPI document (it tests bounds for truth);
#: these put it back.
ZERO_MINIMUM: dict[str, Any] = {"extra_json_schema": {"extra": {"minimum": 0}}}
ZERO_EXCLUSIVE: dict[str, Any] = {"extra_json_schema": {"extra": {"exclusive_minimum": 0}}}
BackoffSeconds = Annotated[float, Meta(gt=0, le=86400, **ZERO_EXCLUSIVE)]
BackoffMaxSeconds = Annotated[float, Meta(gt=0, le=7 * 86400, **ZERO_EXCLUSIVE)]


class JobIn(Struct, forbid_unknown_fields=True):
    """A job to submit."""

    type: Name
    payload: Any = None
    #: Left out: the job type's default queue (with ``JOBQ_STRICT_TYPES``), else ``default``.
    queue: Name | None = None
    priority: Annotated[int, Meta(ge=0, le=9)] = 5
    #: Left out (or ``null``): the queue's setting (3 and 300 unless an admin changed them).
    max_attempts: MaxAttempts | None = None
    timeout_seconds: TimeoutSeconds | None = None
    run_at: datetime | None = None
    delay_seconds: Annotated[float, Meta(ge=0, le=MAX_DELAY_SECONDS, **ZERO_MINIMUM)] | None = None
    retry_backoff_seconds: BackoffSeconds | None = None
    retry_backoff_max_seconds: BackoffMaxSeconds | None = None


#: Idempotency keys: 1-255 visible ASCII characters (header or batch field).
KEY_RULES: dict[str, Any] = {"min_length": 1, "max_length": 255, "pattern": r"^[\x21-\x7e]+$"}
IdempotencyKey = Annotated[str, Meta(**KEY_RULES)]


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
    #: What the running attempt last reported: ``{"fraction", "message", "at"}`` (or null).
    progress: dict[str, Any] | None = None

    @classmethod
    def of(cls, job: JobRow | JobRecord) -> JobOut:
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
            # JSON text (``msgspec.Raw``) of the list, from a submit
            errors=cast("list[Any]", job.errors),
            idempotency_key=job.idempotency_key,
            cancel_requested=job.cancel_requested,
            trace_id=job.traceparent.split("-")[1] if job.traceparent else None,
            progress=cast("dict[str, Any] | None", job.progress),
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


Scope = Literal["jobs:write", "jobs:read", "jobs:work", "admin"]
Tenant = Annotated[str, Meta(pattern=TENANT_PATTERN)]


class ClientIn(Struct, forbid_unknown_fields=True):
    """An API client to create: it acts for ``tenant`` with ``scopes``."""

    name: Annotated[str, Meta(min_length=1, max_length=100, pattern=r"^[^\x00-\x1f\x7f]+$")]
    tenant: Tenant
    scopes: Annotated[list[Scope], Meta(min_length=1, max_length=4)]
    expires_at: datetime | None = None


class ClientOut(Struct):
    """A client as listed: never its secret or the secret's hash."""

    client_id: uuid.UUID
    name: str
    tenant: str
    scopes: list[str]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None

    @classmethod
    def of(cls, client: ApiClient) -> ClientOut:
        return cls(
            client_id=client.id,
            name=client.name,
            tenant=client.tenant,
            scopes=list(client.scopes),
            created_at=client.created_at,
            expires_at=client.expires_at,
            revoked_at=client.revoked_at,
        )


class ClientSecret(Struct):
    """A new client, or a rotated one: ``client_secret`` is shown this once."""

    client_id: uuid.UUID
    client_secret: str
    name: str
    tenant: str
    scopes: list[str]
    expires_at: datetime | None


class ClientList(Struct):
    items: list[ClientOut]


class Problem(Struct):
    """An error (RFC 9457 problem details)."""

    type: str
    title: str
    status: int
    detail: str
    #: Which fields were wrong (422).
    errors: list[Any] | msgspec.UnsetType = msgspec.UNSET
    #: The OAuth2 error code of a token request (``invalid_client``, ``invalid_scope``, ...).
    error: str | msgspec.UnsetType = msgspec.UNSET


Description = Annotated[str, Meta(max_length=200, pattern=r"^[^\x00-\x1f\x7f]*$")]


#: How long a queue keeps its finished jobs of one status: ``0`` forever; up to 10 years.
RetentionSeconds = Annotated[int, Meta(ge=0, le=3650 * 86400, **ZERO_MINIMUM)]


class QueueIn(Struct, forbid_unknown_fields=True):
    """A queue to declare; its settings fill what a submit to it leaves out. A retention left
    out (or ``null``) is the ``JOBQ_RETENTION_*`` setting."""

    name: Name
    max_attempts: MaxAttempts = 3
    timeout_seconds: TimeoutSeconds = 300
    description: Description = ""
    retention_succeeded_seconds: RetentionSeconds | None = None
    retention_dead_seconds: RetentionSeconds | None = None
    retention_canceled_seconds: RetentionSeconds | None = None


#: The queue settings a ``PATCH`` may set back to ``null`` (the ``JOBQ_RETENTION_*`` setting).
NULLABLE_QUEUE_SETTINGS = frozenset(
    {"retention_succeeded_seconds", "retention_dead_seconds", "retention_canceled_seconds"}
)


class QueuePatch(Struct, forbid_unknown_fields=True):
    """Settings to change (those left out stay; a retention set to ``null`` follows the
    ``JOBQ_RETENTION_*`` setting again); jobs already accepted keep theirs."""

    max_attempts: MaxAttempts | None = None
    timeout_seconds: TimeoutSeconds | None = None
    description: Description | None = None
    retention_succeeded_seconds: RetentionSeconds | msgspec.UnsetType | None = msgspec.UNSET
    retention_dead_seconds: RetentionSeconds | msgspec.UnsetType | None = msgspec.UNSET
    retention_canceled_seconds: RetentionSeconds | msgspec.UnsetType | None = msgspec.UNSET


class QueueOut(Struct):
    """A declared queue: its settings, jobs by status (the caller's tenant's, or every
    tenant's under ``/v1/admin``), and RabbitMQ's figures (``admin`` only, else ``null``)."""

    name: str
    max_attempts: int
    timeout_seconds: int
    description: str
    #: ``null``: the ``JOBQ_RETENTION_*`` setting; ``0``: kept forever.
    retention_succeeded_seconds: int | None
    retention_dead_seconds: int | None
    retention_canceled_seconds: int | None
    created_at: datetime
    updated_at: datetime
    counts: dict[str, int]
    broker: BrokerFigures | None

    @classmethod
    def of(cls, queue: Queue, counts: dict[str, int], broker: BrokerFigures | None) -> QueueOut:
        return cls(
            name=queue.name,
            max_attempts=queue.max_attempts,
            timeout_seconds=queue.timeout_seconds,
            description=queue.description,
            retention_succeeded_seconds=queue.retention_succeeded_seconds,
            retention_dead_seconds=queue.retention_dead_seconds,
            retention_canceled_seconds=queue.retention_canceled_seconds,
            created_at=queue.created_at,
            updated_at=queue.updated_at,
            counts=counts,
            broker=broker,
        )


class QueueList(Struct):
    items: list[QueueOut]


def encoded_size(value: Any) -> tuple[str, int]:
    """The JSON text of a payload and its size in bytes."""
    raw = msgspec.json.encode(value)
    return raw.decode(), len(raw)


# -- HTTP workers ------------------------------------------------------------------------

LeaseSeconds = Annotated[float, Meta(ge=5, le=3600)]
ErrorText = Annotated[str, Meta(max_length=2000)]


def _default_queues() -> list[str]:
    return ["default"]


class LeaseIn(Struct, forbid_unknown_fields=True):
    """What an HTTP worker asks for: jobs of its tenant from ``queues`` (of ``types``)."""

    queues: Annotated[list[Name], Meta(min_length=1, max_length=20)] = msgspec.field(
        default_factory=_default_queues
    )
    types: Annotated[list[Name], Meta(min_length=1, max_length=100)] | None = None
    max_jobs: Annotated[int, Meta(ge=1, le=100)] = 1
    #: How long to wait for a job when none is due (at most ``JOBQ_LEASE_MAX_WAIT_SECONDS``).
    wait_seconds: Annotated[float, Meta(ge=0, le=30, **ZERO_MINIMUM)] = 0
    #: Left out: ``JOBQ_LEASE_SECONDS``.
    lease_seconds: LeaseSeconds | None = None


class LeasedJob(Struct):
    """A job now held by the caller until ``lease_expires_at``: heartbeat to keep it, then
    complete or fail it, naming ``lease_id``."""

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
    traceparent: str | None
    tenant: str
    #: The W3C ``tracestate`` that goes with ``traceparent``, to continue the job's trace.
    tracestate: str | None = None


class LeaseList(Struct):
    items: list[LeasedJob]


class ProgressIn(Struct, forbid_unknown_fields=True):
    fraction: Annotated[float, Meta(ge=0, le=1, **ZERO_MINIMUM)]
    message: Annotated[str, Meta(max_length=200)] = ""


class HeartbeatIn(Struct, forbid_unknown_fields=True):
    lease_id: uuid.UUID
    #: How far the job is, shown with it while it runs.
    progress: ProgressIn | None = None
    #: Left out: the length the lease was taken for would be unknown here, so ``JOBQ_LEASE_SECONDS``.
    lease_seconds: LeaseSeconds | None = None


class HeartbeatOut(Struct):
    """The lease runs ``lease_seconds`` more; ``cancel_requested``: stop and fail the job."""

    lease_seconds: float
    cancel_requested: bool


class CompleteIn(Struct, forbid_unknown_fields=True):
    lease_id: uuid.UUID
    result: Any = None


class FailIn(Struct, forbid_unknown_fields=True):
    """A failed attempt: retried after a backoff while attempts remain, unless
    ``retryable`` is false (then ``dead`` at once)."""

    lease_id: uuid.UUID
    message: ErrorText
    error_type: Annotated[str, Meta(min_length=1, max_length=200)] = "Error"
    retryable: bool = True


class TypeOut(Struct):
    """A job type a worker registered: its payload's JSON Schema, its defaults, when a worker
    last said it serves it, and whether that is within the grace period. ``tenant``: the tenant
    whose HTTP workers registered it (for that tenant alone), ``null`` for jobq's own workers'."""

    name: str
    schema: dict[str, Any]
    defaults: dict[str, Any]
    last_seen: datetime
    served: bool
    tenant: str | None = None


class TypeDefaultsIn(Struct, forbid_unknown_fields=True):
    """What a job of the type gets when its submitter leaves it out (with strict types)."""

    queue: Name | None = None
    max_attempts: MaxAttempts | None = None
    timeout_seconds: TimeoutSeconds | None = None
    retry_backoff_seconds: BackoffSeconds | None = None
    retry_backoff_max_seconds: BackoffMaxSeconds | None = None


class TypeIn(Struct, forbid_unknown_fields=True):
    """A job type an HTTP worker serves: the JSON Schema its payloads must fit (``{}``:
    anything) and its defaults."""

    name: Name
    schema: dict[str, Any] = msgspec.field(default_factory=dict)
    defaults: TypeDefaultsIn = msgspec.field(default_factory=TypeDefaultsIn)


class TypesIn(Struct, forbid_unknown_fields=True):
    types: Annotated[list[TypeIn], Meta(min_length=1, max_length=100)]


class TypeList(Struct):
    items: list[TypeOut]


# -- dead letters ------------------------------------------------------------------------

#: A replay names at most this many jobs (by id, or a filter's ``limit``): one transaction.
MAX_REPLAY = 1000
#: An error class, as workers record it (``last_error.type``: the exception's class name).
ErrorClass = Annotated[str, Meta(min_length=1, max_length=200, pattern=r"^[\x21-\x7e]+$")]


class DeadFilterIn(Struct, forbid_unknown_fields=True):
    """Which dead jobs: by queue, type, error class and when they died (``since``
    inclusive, ``until`` exclusive, on ``finished_at``)."""

    queue: Name | None = None
    type: Name | None = None
    error: ErrorClass | None = None
    since: datetime | None = None
    until: datetime | None = None


class ReplayIn(Struct, forbid_unknown_fields=True):
    """Dead jobs to queue again with a fresh attempt budget: ``ids``, or the ``limit`` that
    died last of those ``filter`` matches. ``queue`` moves them to another declared queue;
    ``payload`` (with exactly one id) replaces the job's payload. ``tenant``: ``admin`` only."""

    ids: Annotated[list[uuid.UUID], Meta(min_length=1, max_length=MAX_REPLAY)] | None = None
    filter: DeadFilterIn | None = None
    limit: Annotated[int, Meta(ge=1, le=MAX_REPLAY)] = 100
    tenant: Tenant | None = None
    queue: Name | None = None
    payload: Any = msgspec.UNSET


class ReplayedOut(Struct):
    id: uuid.UUID
    queue_before: str
    queue_after: str
    payload_replaced: bool


class SkippedOut(Struct):
    """``not_found`` (unknown, or another tenant's), ``not_dead`` (with its ``status``),
    ``queue_undeclared`` (its queue was deleted: replay it with ``queue``)."""

    id: uuid.UUID
    reason: str
    status: str | None


class ReplayOut(Struct):
    """What the replay did; ``repeated``: the ``Idempotency-Key`` named an earlier request,
    whose result this is (nothing was replayed now)."""

    action_id: uuid.UUID
    at: datetime
    repeated: bool
    replayed: list[ReplayedOut]
    skipped: list[SkippedOut]


def _no_filter() -> DeadFilterIn:
    return DeadFilterIn()


class PurgeIn(Struct, forbid_unknown_fields=True):
    """Dead jobs to delete; ``dry_run`` (the default) only counts them."""

    filter: DeadFilterIn = msgspec.field(default_factory=_no_filter)
    tenant: Tenant | None = None
    dry_run: bool = True


class PurgeOut(Struct):
    """``matched``: the dead jobs the filter matches now; ``deleted``: those this purge
    deleted (0 in a dry run); ``action_id``: its audit record (``null`` in a dry run)."""

    dry_run: bool
    matched: int
    deleted: int
    action_id: uuid.UUID | None


class ReplayRecordOut(Struct):
    """One replay of the job: who (the token's subject), when, and what it changed."""

    id: uuid.UUID
    action_id: uuid.UUID
    actor: str
    at: datetime
    queue_before: str
    queue_after: str
    payload_replaced: bool
    #: SHA-256 of the new payload's JSON (keys sorted), when it was replaced.
    payload_digest: str | None


class DeadLetterOut(Struct):
    """A dead job (or one replayed from dead) with its full error history (``job.errors``)
    and its replays, oldest first."""

    job: JobOut
    replays: list[ReplayRecordOut]
