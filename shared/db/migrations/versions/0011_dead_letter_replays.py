"""Dead letters as a resource: the index ``GET /v1/dead`` reads, and the audit of replays and
purges.

``jobs_dead`` holds a tenant's dead jobs in the order they died (``finished_at``, then ``id``):
a page of ``GET /v1/dead``, with or without a time range, is a range of it read backwards. It is
partial, so only jobs that die (and leave ``dead``) write to it; built ``CONCURRENTLY``, outside
the migration's transaction, so a large ``jobs`` table keeps taking submits meanwhile.

``dead_letter_actions`` records each replay or purge request: who (the token's subject), when,
what it asked (without an edited payload: its digest) and what it did; with an idempotency key,
``(tenant, action, idempotency_key)`` is unique, so the same request again finds the first one's
result instead of acting twice. ``dead_letter_replays`` records each job a replay moved, in the
transaction that moved it: its queue before and after, and whether its payload was replaced
(with the new payload's digest). Neither references ``jobs``: the record of what was done
outlives the job (retention, a purge).

Revision ID: 0011
Revises: 0009
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, UUID

revision = "0011"
down_revision = "0009"
branch_labels = None
depends_on = None


def _at() -> sa.Column[object]:
    return sa.Column(
        "at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")
    )


def upgrade() -> None:
    op.create_table(
        "dead_letter_actions",
        sa.Column("id", UUID(as_uuid=True), primary_key=True),
        sa.Column("tenant", sa.Text, nullable=False),
        sa.Column("actor", sa.Text, nullable=False),
        sa.Column("action", sa.Text, nullable=False),
        _at(),
        sa.Column("idempotency_key", sa.Text),
        sa.Column("request_digest", sa.Text, nullable=False),
        sa.Column("request", JSONB, nullable=False),
        sa.Column("result", JSONB, nullable=False, server_default="{}"),
        sa.CheckConstraint("action IN ('replay', 'purge')", name="dead_letter_actions_action"),
    )
    op.create_index(
        "dead_letter_actions_key",
        "dead_letter_actions",
        ["tenant", "action", "idempotency_key"],
        unique=True,
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
    )
    op.create_table(
        "dead_letter_replays",
        sa.Column("id", UUID(as_uuid=True), primary_key=True),
        sa.Column(
            "action_id",
            UUID(as_uuid=True),
            sa.ForeignKey("dead_letter_actions.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("job_id", UUID(as_uuid=True), nullable=False),
        sa.Column("tenant", sa.Text, nullable=False),
        sa.Column("actor", sa.Text, nullable=False),
        _at(),
        sa.Column("queue_before", sa.Text, nullable=False),
        sa.Column("queue_after", sa.Text, nullable=False),
        sa.Column("payload_replaced", sa.Boolean, nullable=False),
        sa.Column("payload_digest", sa.Text),
    )
    op.create_index("dead_letter_replays_job", "dead_letter_replays", ["job_id", "at"])
    with op.get_context().autocommit_block():
        op.create_index(
            "jobs_dead",
            "jobs",
            ["tenant", "finished_at", "id"],
            postgresql_where=sa.text("status = 'dead'"),
            postgresql_concurrently=True,
            if_not_exists=True,
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index("jobs_dead", "jobs", postgresql_concurrently=True, if_exists=True)
    op.drop_table("dead_letter_replays")
    op.drop_table("dead_letter_actions")
