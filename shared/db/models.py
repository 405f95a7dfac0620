"""The tables. SQLModel gives typed rows for reads; writes on the hot path go through ``store``."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.dialects.postgresql import UUID as PG_UUID
from sqlmodel import Field, SQLModel

from shared.domain import JobStatus

NOW = sa.text("now()")


def _ts(nullable: bool = True, default: bool = False) -> Any:
    return Field(
        default=None,
        sa_column=sa.Column(
            sa.DateTime(timezone=True), nullable=nullable, server_default=NOW if default else None
        ),
    )


class Job(SQLModel, table=True):
    """One job: the source of truth for its status, attempts, lease and outcome."""

    __tablename__ = "jobs"

    id: uuid.UUID = Field(sa_column=sa.Column(PG_UUID(as_uuid=True), primary_key=True))
    tenant: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    type: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    queue: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    payload: Any = Field(sa_column=sa.Column(JSONB, nullable=False))
    priority: int = Field(sa_column=sa.Column(sa.SmallInteger, nullable=False))
    status: JobStatus = Field(sa_column=sa.Column(sa.Text, nullable=False))
    attempts: int = Field(sa_column=sa.Column(sa.Integer, nullable=False, server_default="0"))
    max_attempts: int = Field(sa_column=sa.Column(sa.Integer, nullable=False))
    timeout_seconds: int = Field(sa_column=sa.Column(sa.Integer, nullable=False))
    retry_backoff_seconds: float | None = Field(default=None, sa_column=sa.Column(sa.Float))
    retry_backoff_max_seconds: float | None = Field(default=None, sa_column=sa.Column(sa.Float))
    run_at: datetime = _ts(nullable=False, default=True)
    result: Any = Field(default=None, sa_column=sa.Column(JSONB))
    last_error: Any = Field(default=None, sa_column=sa.Column(JSONB))
    errors: Any = Field(
        default=None, sa_column=sa.Column(JSONB, nullable=False, server_default="[]")
    )
    #: What the running attempt last said: ``{"fraction", "message", "at"}``.
    progress: Any = Field(default=None, sa_column=sa.Column(JSONB))
    idempotency_key: str | None = Field(default=None, sa_column=sa.Column(sa.Text))
    #: What the request under ``idempotency_key`` asked for: a reuse must ask the same.
    request_digest: str | None = Field(default=None, sa_column=sa.Column(sa.Text))
    #: Fencing token of the current claim; every write by a worker names it.
    lease_id: uuid.UUID | None = Field(default=None, sa_column=sa.Column(PG_UUID(as_uuid=True)))
    lease_expires_at: datetime | None = _ts()
    cancel_requested: bool = Field(
        default=False, sa_column=sa.Column(sa.Boolean, nullable=False, server_default="false")
    )
    #: Last time a ticket for this job was handed to the broker, and when it was confirmed.
    dispatched_at: datetime | None = _ts()
    published_at: datetime | None = _ts()
    #: W3C traceparent of the submit, so every later span joins the job's trace.
    traceparent: str | None = Field(default=None, sa_column=sa.Column(sa.Text))
    #: The W3C tracestate that came with it, sent beside it in every ticket.
    tracestate: str | None = Field(default=None, sa_column=sa.Column(sa.Text))
    #: traceparent of the span of the attempt that failed last: the retry's span links to it.
    attempt_span: str | None = Field(default=None, sa_column=sa.Column(sa.Text))
    #: The jobs it waits for (docs/design.md §2.1), how many of those have not finished, and
    #: what a dependency that ends dead or canceled does to it (``cancel`` or ``run``).
    depends_on: list[uuid.UUID] | None = Field(
        default=None, sa_column=sa.Column(ARRAY(PG_UUID(as_uuid=True)))
    )
    waiting_on: int | None = Field(default=None, sa_column=sa.Column(sa.Integer))
    on_dependency_failure: str | None = Field(default=None, sa_column=sa.Column(sa.Text))
    #: Something waits for it: its finish releases dependents (a trigger, migration 0013).
    has_dependents: bool = Field(
        default=False, sa_column=sa.Column(sa.Boolean, nullable=False, server_default="false")
    )
    #: Queued, but waiting in PostgreSQL for the dispatcher (docs/design.md §2.2): its
    #: limits, or its turn among tenants, come first.
    held: bool = Field(
        default=False, sa_column=sa.Column(sa.Boolean, nullable=False, server_default="false")
    )
    #: At most ``concurrency_limit`` jobs of the tenant with this key run (or are released to
    #: run) at once, cluster-wide.
    concurrency_key: str | None = Field(default=None, sa_column=sa.Column(sa.Text))
    concurrency_limit: int | None = Field(default=None, sa_column=sa.Column(sa.Integer))
    created_at: datetime = _ts(nullable=False, default=True)
    updated_at: datetime = _ts(nullable=False, default=True)
    started_at: datetime | None = _ts()
    finished_at: datetime | None = _ts()
    #: The jobq client that submitted the job (``None``: an external issuer's token).
    client_id: uuid.UUID | None = Field(default=None, sa_column=sa.Column(PG_UUID(as_uuid=True)))
    #: Where the job is POSTed once it finishes (docs/design.md §10); the rest is that delivery's
    #: state: attempts made for the finish ``callback_for``, when the next may start (or until
    #: when the current one is claimed), and the finish last delivered or given up on.
    callback_url: str | None = Field(default=None, sa_column=sa.Column(sa.Text))
    callback_attempts: int = Field(
        default=0, sa_column=sa.Column(sa.Integer, nullable=False, server_default="0")
    )
    callback_for: datetime | None = _ts()
    callback_next_at: datetime | None = _ts()
    callback_done_at: datetime | None = _ts()


class JobDependency(SQLModel, table=True):
    """An edge ``job_id`` waits for ``depends_on``; ``resolved`` is the status the dependency
    ended in, once it did (each edge resolves once)."""

    __tablename__ = "job_dependencies"

    depends_on: uuid.UUID = Field(sa_column=sa.Column(PG_UUID(as_uuid=True), primary_key=True))
    job_id: uuid.UUID = Field(
        sa_column=sa.Column(
            PG_UUID(as_uuid=True),
            sa.ForeignKey("jobs.id", ondelete="CASCADE"),
            primary_key=True,
        )
    )
    resolved: str | None = Field(default=None, sa_column=sa.Column(sa.Text))


class ApiClient(SQLModel, table=True):
    """An OAuth2 client: exchanges its secret (stored as SHA-256) for short-lived tokens."""

    __tablename__ = "api_clients"

    id: uuid.UUID = Field(sa_column=sa.Column(PG_UUID(as_uuid=True), primary_key=True))
    name: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    tenant: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    scopes: list[str] = Field(sa_column=sa.Column(ARRAY(sa.Text), nullable=False))
    secret_hash: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    #: Signs its jobs' callbacks (HMAC needs the secret itself, so it is stored as is); after a
    #: rotation the previous one signs too, until ``callback_previous_until``.
    callback_secret: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    callback_secret_previous: str | None = Field(default=None, sa_column=sa.Column(sa.Text))
    callback_previous_until: datetime | None = _ts()
    created_at: datetime = _ts(nullable=False, default=True)
    expires_at: datetime | None = _ts()
    revoked_at: datetime | None = _ts()


class Queue(SQLModel, table=True):
    """A queue an operator declared: jobs may name it, and its settings fill what a submit
    leaves out."""

    __tablename__ = "queues"

    name: str = Field(sa_column=sa.Column(sa.Text, primary_key=True))
    max_attempts: int = Field(
        default=3, sa_column=sa.Column(sa.Integer, nullable=False, server_default="3")
    )
    timeout_seconds: int = Field(
        default=300, sa_column=sa.Column(sa.Integer, nullable=False, server_default="300")
    )
    description: str = Field(
        default="", sa_column=sa.Column(sa.Text, nullable=False, server_default="")
    )
    #: How long its finished jobs are kept, by status (``None``: the ``JOBQ_RETENTION_*``
    #: setting; ``0``: forever).
    retention_succeeded_seconds: int | None = Field(default=None, sa_column=sa.Column(sa.Integer))
    retention_dead_seconds: int | None = Field(default=None, sa_column=sa.Column(sa.Integer))
    retention_canceled_seconds: int | None = Field(default=None, sa_column=sa.Column(sa.Integer))
    #: At most this many of its jobs run (or are released to run) at once, cluster-wide.
    max_running: int | None = Field(default=None, sa_column=sa.Column(sa.Integer))
    #: Set by the dispatcher while its outstanding tickets reach ``JOBQ_FAIR_DEPTH``: its
    #: new jobs are held and released tenant by tenant.
    congested: bool = Field(
        default=False, sa_column=sa.Column(sa.Boolean, nullable=False, server_default="false")
    )
    created_at: datetime = _ts(nullable=False, default=True)
    updated_at: datetime = _ts(nullable=False, default=True)


class TenantLimits(SQLModel, table=True):
    """A tenant's limits, cluster-wide: jobs running at once, and jobs started per second (a
    token bucket of ``burst``, kept here by the dispatcher)."""

    __tablename__ = "tenant_limits"

    tenant: str = Field(sa_column=sa.Column(sa.Text, primary_key=True))
    max_running: int | None = Field(default=None, sa_column=sa.Column(sa.Integer))
    starts_per_second: float | None = Field(default=None, sa_column=sa.Column(sa.Float))
    burst: int | None = Field(default=None, sa_column=sa.Column(sa.Integer))
    tokens: float = Field(
        default=0.0, sa_column=sa.Column(sa.Float, nullable=False, server_default="0")
    )
    refilled_at: datetime = _ts(nullable=False, default=True)
    created_at: datetime = _ts(nullable=False, default=True)
    updated_at: datetime = _ts(nullable=False, default=True)


class Schedule(SQLModel, table=True):
    """A tenant's cron schedule: each tick of ``cron`` in ``timezone`` submits ``job`` (a
    submit's body, checked as one), subject to the overlap policy and the catch-up bound."""

    __tablename__ = "schedules"
    __table_args__ = (
        sa.UniqueConstraint("tenant", "name", name="schedules_tenant_name"),
        sa.CheckConstraint("overlap IN ('allow', 'skip', 'cancel')", name="schedules_overlap"),
        sa.Index("schedules_due", "next_fire_at", postgresql_where=sa.text("NOT paused")),
    )

    id: uuid.UUID = Field(sa_column=sa.Column(PG_UUID(as_uuid=True), primary_key=True))
    tenant: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    name: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    cron: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    timezone: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    job: Any = Field(sa_column=sa.Column(JSONB, nullable=False))
    #: While the previous tick's job is unfinished: ``allow`` another, ``skip`` this tick,
    #: ``cancel`` the previous job.
    overlap: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    #: At most this many of the ticks missed while no scheduler ran are fired (the latest).
    catch_up: int = Field(sa_column=sa.Column(sa.Integer, nullable=False))
    paused: bool = Field(
        default=False, sa_column=sa.Column(sa.Boolean, nullable=False, server_default="false")
    )
    #: The next tick to fire (UTC).
    next_fire_at: datetime = _ts(nullable=False)
    last_tick: datetime | None = _ts()
    last_job_id: uuid.UUID | None = Field(default=None, sa_column=sa.Column(PG_UUID(as_uuid=True)))
    #: Missed ticks left unfired for the catch-up bound, in all.
    skipped_ticks: int = Field(
        default=0, sa_column=sa.Column(sa.BigInteger, nullable=False, server_default="0")
    )
    created_at: datetime = _ts(nullable=False, default=True)
    updated_at: datetime = _ts(nullable=False, default=True)


class DeadLetterAction(SQLModel, table=True):
    """A replay or purge of dead jobs: who asked, when, what, and what it did (migration 0011).

    With an idempotency key, the same request again is answered with ``result`` instead of
    acting twice."""

    __tablename__ = "dead_letter_actions"

    id: uuid.UUID = Field(sa_column=sa.Column(PG_UUID(as_uuid=True), primary_key=True))
    tenant: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    #: The token's subject: a jobq client id, or an external IdP's ``sub``.
    actor: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    action: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    at: datetime = _ts(nullable=False, default=True)
    idempotency_key: str | None = Field(default=None, sa_column=sa.Column(sa.Text))
    request_digest: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    #: What was asked (an edited payload only as its digest).
    request: Any = Field(sa_column=sa.Column(JSONB, nullable=False))
    result: Any = Field(sa_column=sa.Column(JSONB, nullable=False, server_default="{}"))


class DeadLetterReplay(SQLModel, table=True):
    """One dead job a replay moved back to ``queued``, written in the same transaction."""

    __tablename__ = "dead_letter_replays"

    id: uuid.UUID = Field(sa_column=sa.Column(PG_UUID(as_uuid=True), primary_key=True))
    action_id: uuid.UUID = Field(
        sa_column=sa.Column(
            PG_UUID(as_uuid=True),
            sa.ForeignKey("dead_letter_actions.id", ondelete="CASCADE"),
            nullable=False,
        )
    )
    job_id: uuid.UUID = Field(sa_column=sa.Column(PG_UUID(as_uuid=True), nullable=False))
    tenant: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    actor: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    at: datetime = _ts(nullable=False, default=True)
    queue_before: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    queue_after: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    payload_replaced: bool = Field(sa_column=sa.Column(sa.Boolean, nullable=False))
    #: SHA-256 of the new payload's JSON text, when it was replaced.
    payload_digest: str | None = Field(default=None, sa_column=sa.Column(sa.Text))


class ScheduleFire(SQLModel, table=True):
    """One tick of a schedule that came due: its job (``None`` if skipped) and the outcome
    (``fired``, ``skipped_overlap``). The key makes a tick fire once (docs/design.md §9)."""

    __tablename__ = "schedule_fires"
    __table_args__ = (sa.Index("schedule_fires_tick", "tick"),)

    schedule_id: uuid.UUID = Field(
        sa_column=sa.Column(
            PG_UUID(as_uuid=True),
            sa.ForeignKey("schedules.id", ondelete="CASCADE"),
            primary_key=True,
        )
    )
    tick: datetime = Field(sa_column=sa.Column(sa.DateTime(timezone=True), primary_key=True))
    job_id: uuid.UUID | None = Field(default=None, sa_column=sa.Column(PG_UUID(as_uuid=True)))
    outcome: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    fired_at: datetime = _ts(nullable=False, default=True)


class CallbackDelivery(SQLModel, table=True):
    """One attempt to deliver a finished job to its ``callback_url``."""

    __tablename__ = "callback_deliveries"

    id: uuid.UUID = Field(sa_column=sa.Column(PG_UUID(as_uuid=True), primary_key=True))
    #: Deleted with its job by retention (``shared.db.sweeps.DELETE_FINISHED``).
    job_id: uuid.UUID = Field(sa_column=sa.Column(PG_UUID(as_uuid=True), nullable=False))
    #: ``job.succeeded``, ``job.dead`` or ``job.canceled``.
    event: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    #: The finish delivered (a job retried and finished again owes another delivery).
    finished_at: datetime = _ts(nullable=False)
    attempt: int = Field(sa_column=sa.Column(sa.Integer, nullable=False))
    at: datetime = _ts(nullable=False)
    duration_seconds: float = Field(sa_column=sa.Column(sa.Float, nullable=False))
    status_code: int | None = Field(default=None, sa_column=sa.Column(sa.Integer))
    error: str | None = Field(default=None, sa_column=sa.Column(sa.Text))
    #: The start of the response body (``shared.callbacks.EXCERPT_BYTES``).
    response: str | None = Field(default=None, sa_column=sa.Column(sa.Text))
    #: ``delivered``, ``retrying`` (at ``next_attempt_at``) or ``gave_up``.
    outcome: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    next_attempt_at: datetime | None = _ts()
