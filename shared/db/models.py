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
    created_at: datetime = _ts(nullable=False, default=True)
    updated_at: datetime = _ts(nullable=False, default=True)
    started_at: datetime | None = _ts()
    finished_at: datetime | None = _ts()


class ApiClient(SQLModel, table=True):
    """An OAuth2 client: exchanges its secret (stored as SHA-256) for short-lived tokens."""

    __tablename__ = "api_clients"

    id: uuid.UUID = Field(sa_column=sa.Column(PG_UUID(as_uuid=True), primary_key=True))
    name: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    tenant: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    scopes: list[str] = Field(sa_column=sa.Column(ARRAY(sa.Text), nullable=False))
    secret_hash: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
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


class ScheduleFire(SQLModel, table=True):
    """One tick of a schedule that came due: its job (``None`` if skipped) and the outcome
    (``fired``, ``skipped_overlap``). The key makes a tick fire once (docs/design.md §8)."""

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
