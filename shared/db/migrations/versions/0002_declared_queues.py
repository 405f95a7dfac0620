"""Declared queues: a job may only name a queue an operator declared.

Besides ``default``, the queues unfinished jobs name are declared, so that no job waiting in
one is stranded by the upgrade; their description says so, for an operator to review (until
now any client could name a queue, so these names may come from any tenant). Queues whose jobs
are all finished are not declared: those jobs stay readable. ``jobq_undeclared_queue`` raises
the error the submit statement reports
(SQLSTATE ``JQ001``, the queue's name as its detail): it is called only for a job whose
queue is missing, so the check costs nothing on the way that succeeds.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "queues",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("max_attempts", sa.Integer, nullable=False, server_default="3"),
        sa.Column("timeout_seconds", sa.Integer, nullable=False, server_default="300"),
        sa.Column("description", sa.Text, nullable=False, server_default=""),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
        sa.CheckConstraint("name ~ '^[a-z][a-z0-9_.:-]{0,63}$'", name="queues_name_pattern"),
        sa.CheckConstraint("max_attempts BETWEEN 1 AND 100", name="queues_max_attempts_range"),
        sa.CheckConstraint(
            "timeout_seconds BETWEEN 1 AND 604800", name="queues_timeout_seconds_range"
        ),
    )
    op.execute("INSERT INTO queues (name) VALUES ('default')")
    op.execute(
        "INSERT INTO queues (name, description)"
        " SELECT DISTINCT queue, 'declared by the upgrade to declared queues: unfinished jobs"
        " named it; review it' FROM jobs"
        " WHERE status IN ('scheduled', 'queued', 'running', 'retrying') AND queue <> 'default'"
    )
    op.execute("""
        CREATE FUNCTION jobq_undeclared_queue(queue text) RETURNS text LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'queue % is not declared', queue USING ERRCODE = 'JQ001', DETAIL = queue;
        END $$
    """)


def downgrade() -> None:
    op.execute("DROP FUNCTION jobq_undeclared_queue(text)")
    op.drop_table("queues")
