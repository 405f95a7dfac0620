"""Queued jobs in the order HTTP workers lease them (``shared.db.leases.LEASE``): per tenant,
highest priority, then oldest due, then oldest. The lease then reads as many rows as it takes
instead of sorting the tenant's whole backlog (2 ms at 2,500 queued jobs, growing with it).

Built ``CONCURRENTLY``, outside the migration's transaction: a large ``jobs`` table keeps
taking submits while it builds.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.get_context().autocommit_block():
        op.create_index(
            "jobs_lease_order",
            "jobs",
            ["tenant", sa.text("priority DESC"), "run_at", "id"],
            postgresql_where=sa.text("status = 'queued'"),
            postgresql_concurrently=True,
            if_not_exists=True,
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index("jobs_lease_order", "jobs", postgresql_concurrently=True, if_exists=True)
