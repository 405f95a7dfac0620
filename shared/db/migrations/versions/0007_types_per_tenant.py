"""Job types registered by a tenant's HTTP workers: ``job_types`` is keyed by tenant and name.

jobq's own workers serve every tenant and register with the empty tenant (``''``, cluster-wide);
an HTTP worker serves only its own tenant's jobs, so what it registers is that tenant's alone
and cannot change what other tenants may submit.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("job_types", sa.Column("tenant", sa.Text, nullable=False, server_default=""))
    op.drop_constraint("job_types_pkey", "job_types", type_="primary")
    op.create_primary_key("job_types_pkey", "job_types", ["tenant", "name"])


def downgrade() -> None:
    op.execute("DELETE FROM job_types WHERE tenant <> ''")
    op.drop_constraint("job_types_pkey", "job_types", type_="primary")
    op.create_primary_key("job_types_pkey", "job_types", ["name"])
    op.drop_column("job_types", "tenant")
