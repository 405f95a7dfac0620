"""Jobs and API clients, with the indexes the hot queries need.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

STATUSES = "'scheduled','queued','running','retrying','succeeded','dead','canceled'"


def ts(name: str, nullable: bool = True, now: bool = False) -> sa.Column[object]:
    default = sa.text("now()") if now else None
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable, server_default=default)


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", UUID(as_uuid=True), primary_key=True),
        sa.Column("tenant", sa.Text, nullable=False),
        sa.Column("type", sa.Text, nullable=False),
        sa.Column("queue", sa.Text, nullable=False),
        sa.Column("payload", JSONB, nullable=False),
        sa.Column("priority", sa.SmallInteger, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("max_attempts", sa.Integer, nullable=False),
        sa.Column("timeout_seconds", sa.Integer, nullable=False),
        sa.Column("retry_backoff_seconds", sa.Float),
        sa.Column("retry_backoff_max_seconds", sa.Float),
        ts("run_at", nullable=False, now=True),
        sa.Column("result", JSONB),
        sa.Column("last_error", JSONB),
        sa.Column("errors", JSONB, nullable=False, server_default="[]"),
        sa.Column("idempotency_key", sa.Text),
        sa.Column("lease_id", UUID(as_uuid=True)),
        ts("lease_expires_at"),
        sa.Column("cancel_requested", sa.Boolean, nullable=False, server_default="false"),
        ts("dispatched_at"),
        ts("published_at"),
        sa.Column("traceparent", sa.Text),
        ts("created_at", nullable=False, now=True),
        ts("updated_at", nullable=False, now=True),
        ts("started_at"),
        ts("finished_at"),
        sa.CheckConstraint(f"status IN ({STATUSES})", name="jobs_status_valid"),
        sa.CheckConstraint("priority BETWEEN 0 AND 9", name="jobs_priority_range"),
        sa.CheckConstraint(
            "attempts >= 0 AND attempts <= max_attempts", name="jobs_attempts_range"
        ),
        sa.CheckConstraint(
            "(status = 'running') = (lease_id IS NOT NULL)", name="jobs_lease_iff_running"
        ),
    )
    # Idempotency keys are unique per tenant.
    op.create_index(
        "jobs_tenant_idempotency_key",
        "jobs",
        ["tenant", "idempotency_key"],
        unique=True,
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
    )
    # GET /v1/jobs: keyset on id (UUIDv7, time-ordered) within a tenant, optionally by status.
    op.create_index("jobs_tenant_id", "jobs", ["tenant", "id"])
    op.create_index("jobs_tenant_status_id", "jobs", ["tenant", "status", "id"])
    # Scheduler: due delayed and retrying jobs.
    op.create_index(
        "jobs_due",
        "jobs",
        ["run_at"],
        postgresql_where=sa.text("status IN ('scheduled', 'retrying')"),
    )
    # Scheduler: expired leases.
    op.create_index(
        "jobs_lease_expiry",
        "jobs",
        ["lease_expires_at"],
        postgresql_where=sa.text("status = 'running'"),
    )
    # Scheduler: tickets never confirmed (queued jobs, and dead jobs owed to the dead-letter queue).
    op.create_index(
        "jobs_unpublished",
        "jobs",
        ["dispatched_at"],
        postgresql_where=sa.text("status IN ('queued', 'dead') AND published_at IS NULL"),
    )
    # Scheduler: confirmed tickets that may have been lost (purged queue), and queue counts.
    op.create_index(
        "jobs_queued_by_queue",
        "jobs",
        ["queue", "published_at"],
        postgresql_where=sa.text("status = 'queued'"),
    )

    op.create_table(
        "api_clients",
        sa.Column("id", UUID(as_uuid=True), primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("tenant", sa.Text, nullable=False),
        sa.Column("scopes", ARRAY(sa.Text), nullable=False),
        sa.Column("secret_hash", sa.Text, nullable=False),
        ts("created_at", nullable=False, now=True),
        ts("expires_at"),
        ts("revoked_at"),
    )


def downgrade() -> None:
    op.drop_table("api_clients")
    op.drop_table("jobs")
