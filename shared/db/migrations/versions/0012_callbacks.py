"""Result callbacks: a job's ``callback_url``, who submitted it, its delivery state, each
attempt's record, and each client's signing secret (docs/design.md §10).

A delivery is owed while ``callback_url IS NOT NULL AND finished_at IS NOT NULL AND
callback_done_at IS DISTINCT FROM finished_at``: every path that finishes a job sets
``finished_at``, so none of them needs to know about callbacks. ``jobs_callbacks_pending``
indexes exactly those rows (few at any moment), built ``CONCURRENTLY`` like ``jobs_finished``.
The new ``jobs`` columns are nullable or take a constant default: adding them rewrites no row.
Existing clients get a signing secret of 244 random bits (two ``gen_random_uuid``).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

#: The rows that owe a delivery (``shared.db.callbacks.PENDING`` says the same).
PENDING = (
    "callback_url IS NOT NULL AND finished_at IS NOT NULL"
    " AND callback_done_at IS DISTINCT FROM finished_at"
)

#: When a pending delivery may be attempted: at once for a finish not attempted yet (a job
#: retried and finished again does not wait out the backoff of its previous finish).
DUE = (
    "coalesce(CASE WHEN callback_for IS NOT DISTINCT FROM finished_at THEN callback_next_at END,"
    " '-infinity'::timestamptz)"
)


def ts(name: str, nullable: bool = True) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.add_column("jobs", sa.Column("client_id", UUID(as_uuid=True)))
    op.add_column("jobs", sa.Column("callback_url", sa.Text))
    op.add_column(
        "jobs", sa.Column("callback_attempts", sa.Integer, nullable=False, server_default="0")
    )
    for name in ("callback_for", "callback_next_at", "callback_done_at"):
        op.add_column("jobs", ts(name))
    op.add_column("api_clients", sa.Column("callback_secret", sa.Text))
    op.execute(
        "UPDATE api_clients SET callback_secret = 'jqcb_'"
        " || replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', '')"
    )
    op.alter_column("api_clients", "callback_secret", nullable=False)
    op.add_column("api_clients", sa.Column("callback_secret_previous", sa.Text))
    op.add_column("api_clients", ts("callback_previous_until"))
    op.create_table(
        "callback_deliveries",
        sa.Column("id", UUID(as_uuid=True), primary_key=True),
        # No foreign key: retention deletes a job's attempts in its own statement (a cascade,
        # a trigger per deleted row, tripled its time).
        sa.Column("job_id", UUID(as_uuid=True), nullable=False),
        sa.Column("event", sa.Text, nullable=False),
        ts("finished_at", nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        ts("at", nullable=False),
        sa.Column("duration_seconds", sa.Float, nullable=False),
        sa.Column("status_code", sa.Integer),
        sa.Column("error", sa.Text),
        sa.Column("response", sa.Text),
        sa.Column("outcome", sa.Text, nullable=False),
        ts("next_attempt_at"),
        sa.CheckConstraint(
            "outcome IN ('delivered', 'retrying', 'gave_up')", name="callback_outcome_valid"
        ),
    )
    op.create_index("callback_deliveries_job", "callback_deliveries", ["job_id", "id"])
    with op.get_context().autocommit_block():
        op.create_index(
            "jobs_callbacks_pending",
            "jobs",
            [sa.text(DUE)],
            postgresql_where=sa.text(PENDING),
            postgresql_concurrently=True,
            if_not_exists=True,
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index(
            "jobs_callbacks_pending", "jobs", postgresql_concurrently=True, if_exists=True
        )
    op.drop_table("callback_deliveries")
    for column in ("callback_previous_until", "callback_secret_previous", "callback_secret"):
        op.drop_column("api_clients", column)
    for column in (
        "callback_done_at", "callback_next_at", "callback_for", "callback_attempts",
        "callback_url", "client_id",
    ):  # fmt: skip
        op.drop_column("jobs", column)
