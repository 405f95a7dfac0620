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
