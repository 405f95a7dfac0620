"""Cron schedules, and the record of every tick they fired.

``schedules`` holds a tenant's cron expressions with the job each tick submits;
``schedule_fires`` one row per tick that came due. Its primary key (schedule, tick) is what
makes a tick fire once, whatever the schedulers running and however they crash: the fire row
and the tick's job are inserted in one transaction (docs/design.md §9). ``schedules_due``
finds the schedules whose next tick has come; ``schedule_fires_tick`` the fires old enough
to delete (they are kept as long as a succeeded job is).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, UUID

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    now = sa.text("now()")
    op.create_table(
        "schedules",
        sa.Column("id", UUID(as_uuid=True), primary_key=True),
        sa.Column("tenant", sa.Text, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("cron", sa.Text, nullable=False),
        sa.Column("timezone", sa.Text, nullable=False),
        sa.Column("job", JSONB, nullable=False),
        sa.Column("overlap", sa.Text, nullable=False),
        sa.Column("catch_up", sa.Integer, nullable=False),
        sa.Column("paused", sa.Boolean, nullable=False, server_default="false"),
        sa.Column("next_fire_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_tick", sa.DateTime(timezone=True)),
        sa.Column("last_job_id", UUID(as_uuid=True)),
        sa.Column("skipped_ticks", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=now),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=now),
        sa.UniqueConstraint("tenant", "name", name="schedules_tenant_name"),
        sa.CheckConstraint("overlap IN ('allow', 'skip', 'cancel')", name="schedules_overlap"),
    )
    op.create_index(
        "schedules_due", "schedules", ["next_fire_at"], postgresql_where=sa.text("NOT paused")
    )
    op.create_table(
        "schedule_fires",
        sa.Column(
            "schedule_id",
            UUID(as_uuid=True),
            sa.ForeignKey("schedules.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("tick", sa.DateTime(timezone=True), primary_key=True),
        sa.Column("job_id", UUID(as_uuid=True)),
        sa.Column("outcome", sa.Text, nullable=False),
        sa.Column("fired_at", sa.DateTime(timezone=True), nullable=False, server_default=now),
    )
    op.create_index("schedule_fires_tick", "schedule_fires", ["tick"])


def downgrade() -> None:
    op.drop_table("schedule_fires")
    op.drop_table("schedules")
