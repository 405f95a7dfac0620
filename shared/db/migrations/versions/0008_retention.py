"""Retention: finished jobs are deleted some time after they finished.

Each queue may keep its finished jobs for a time of its own (``NULL``: the ``JOBQ_RETENTION_*``
setting; ``0``: forever). ``jobs_finished`` finds a queue's finished jobs of one status in the
order they finished, so each batch the scheduler deletes is read from the index alone; built
``CONCURRENTLY`` (outside the migration's transaction), so a large ``jobs`` table keeps taking
submits meanwhile.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

STATUSES = ("succeeded", "dead", "canceled")


def upgrade() -> None:
    for status in STATUSES:
        op.add_column("queues", sa.Column(f"retention_{status}_seconds", sa.Integer))
    with op.get_context().autocommit_block():
        op.create_index(
            "jobs_finished",
            "jobs",
            ["queue", "status", "finished_at"],
            postgresql_where=sa.text("status IN ('succeeded', 'dead', 'canceled')"),
            postgresql_concurrently=True,
            if_not_exists=True,
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index("jobs_finished", "jobs", postgresql_concurrently=True, if_exists=True)
    for status in STATUSES:
        op.drop_column("queues", f"retention_{status}_seconds")
