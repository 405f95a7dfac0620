"""The job types workers serve: each worker registers its handlers' types when it starts, and
again every minute (``last_seen``), with the payload's JSON Schema and the type's defaults.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "job_types",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("schema", JSONB, nullable=False, server_default="{}"),
        sa.Column("defaults", JSONB, nullable=False, server_default="{}"),
        sa.Column(
            "last_seen", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
    )


def downgrade() -> None:
    op.drop_table("job_types")
