"""What a running job last said of its progress: ``{"fraction": 0..1, "message": ..., "at": ...}``.

Written by the worker that holds the job's lease (fenced like every other write of its), shown
with the job until it is run again.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("progress", JSONB))


def downgrade() -> None:
    op.drop_column("jobs", "progress")
