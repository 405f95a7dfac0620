"""A digest of the request that made a job under an idempotency key.

A key used again with a different request is refused instead of answered with the original
job (the IETF Idempotency-Key draft's 422). Jobs made before this revision have none: a key of
theirs used again is answered as before.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("request_digest", sa.Text))


def downgrade() -> None:
    op.drop_column("jobs", "request_digest")
