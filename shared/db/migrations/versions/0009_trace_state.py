"""The rest of a job's W3C trace context: ``tracestate``, and the span of its last failed attempt.

``tracestate`` holds what vendors add to the trace context the submit came with; it goes out
with every ticket of the job beside ``traceparent``. ``attempt_span`` is the ``traceparent`` of
the span of the attempt that failed last (written only while spans are exported): the attempt
that retries it links to that span. Both are nullable without a default, so adding them
rewrites no row.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("tracestate", sa.Text))
    op.add_column("jobs", sa.Column("attempt_span", sa.Text))


def downgrade() -> None:
    op.drop_column("jobs", "attempt_span")
    op.drop_column("jobs", "tracestate")
