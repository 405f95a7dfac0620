"""Fair dispatch and limits (docs/design.md §2.2): queued jobs that wait in PostgreSQL for
the dispatcher (``held``) instead of going to RabbitMQ at once.

A queued job is held when it names a ``concurrency_key``, when its queue has a
``max_running`` or is ``congested`` (the dispatcher's flag: as many tickets outstanding as
``JOBQ_FAIR_DEPTH``), when its tenant has limits (``tenant_limits``), or when a submit gives
more of one tenant's jobs to one queue than ``JOBQ_FAIR_BURST``. The scheduler's dispatcher
releases held jobs tenant by tenant, within the limits, and publishes their tickets.

The indexes of queued jobs are split by ``held``: the held ones in the dispatcher's order
(``jobs_held``), the others as before (``jobs_ready`` replaces ``jobs_queued_by_queue``,
``jobs_lease_ready`` replaces ``jobs_lease_order``), so a flood held in PostgreSQL costs the
other reads nothing. ``jobs_key_busy`` counts what holds a key's slots: its jobs running or
released. Built ``CONCURRENTLY``, outside the migration's transaction.

Revision ID: 0015
Revises: 0013
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0013"
branch_labels = None
depends_on = None

Columns = list[str | sa.TextClause]
QUEUED_READY = "status = 'queued' AND NOT held"
INDEXES: dict[str, tuple[Columns, str]] = {
    "jobs_held": (
        ["queue", "tenant", sa.text("priority DESC"), "run_at", "id"],
        "status = 'queued' AND held",
    ),
    "jobs_ready": (["queue", "published_at"], QUEUED_READY),
    "jobs_lease_ready": (["tenant", sa.text("priority DESC"), "run_at", "id"], QUEUED_READY),
    "jobs_key_busy": (
        ["tenant", "concurrency_key"],
        "concurrency_key IS NOT NULL AND (status = 'running' OR (status = 'queued' AND NOT held))",
    ),
}
REPLACED: dict[str, tuple[Columns, str]] = {
    "jobs_queued_by_queue": (["queue", "published_at"], "status = 'queued'"),
    "jobs_lease_order": (["tenant", sa.text("priority DESC"), "run_at", "id"], "status = 'queued'"),
}


def upgrade() -> None:
    op.add_column("jobs", sa.Column("held", sa.Boolean, nullable=False, server_default=sa.false()))
    op.add_column("jobs", sa.Column("concurrency_key", sa.Text))
    op.add_column("jobs", sa.Column("concurrency_limit", sa.Integer))
    op.create_check_constraint(
        "jobs_concurrency_valid",
        "jobs",
        "(concurrency_key IS NULL) = (concurrency_limit IS NULL) AND"
        " (concurrency_limit IS NULL OR concurrency_limit >= 1)",
    )
    op.add_column("queues", sa.Column("max_running", sa.Integer))
    op.add_column(
        "queues", sa.Column("congested", sa.Boolean, nullable=False, server_default=sa.false())
    )
    op.create_table(
        "tenant_limits",
        sa.Column("tenant", sa.Text, primary_key=True),
        sa.Column("max_running", sa.Integer),
        sa.Column("starts_per_second", sa.Float),
        sa.Column("burst", sa.Integer),
        #: The dispatcher's token bucket for ``starts_per_second``.
        sa.Column("tokens", sa.Float, nullable=False, server_default="0"),
        sa.Column(
            "refilled_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.CheckConstraint("max_running IS NULL OR max_running >= 1", name="max_running_valid"),
        sa.CheckConstraint("starts_per_second IS NULL OR starts_per_second > 0", name="rate_valid"),
    )
    with op.get_context().autocommit_block():
        for name, (columns, where) in INDEXES.items():
            _create(name, columns, where)
        for name in REPLACED:
            op.drop_index(name, "jobs", postgresql_concurrently=True, if_exists=True)


def downgrade() -> None:
    with op.get_context().autocommit_block():
        for name, (columns, where) in REPLACED.items():
            _create(name, columns, where)
        for name in INDEXES:
            op.drop_index(name, "jobs", postgresql_concurrently=True, if_exists=True)
    op.drop_table("tenant_limits")
    op.drop_column("queues", "congested")
    op.drop_column("queues", "max_running")
    op.drop_constraint("jobs_concurrency_valid", "jobs")
    for column in ("concurrency_limit", "concurrency_key", "held"):
        op.drop_column("jobs", column)


def _create(name: str, columns: Columns, where: str) -> None:
    op.create_index(
        name,
        "jobs",
        columns,
        postgresql_where=sa.text(where),
        postgresql_concurrently=True,
        if_not_exists=True,
    )
