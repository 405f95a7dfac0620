"""Job dependencies (docs/design.md §2.1): a job may wait, in status ``waiting``, for other
jobs of its tenant to finish.

``jobs.depends_on`` lists what a job waits for and ``waiting_on`` how many of those have not
finished; ``job_dependencies`` holds the same edges the other way round, keyed by the job
depended on, with the status it ended in once it did. ``has_dependents`` marks a job something
waits for, so the trigger below costs the other jobs' moves one boolean test.

The trigger releases dependents in the transaction of the move that finishes a dependency,
whatever makes that move (a worker, an HTTP worker, an expired lease, a cancel): the last
dependency to succeed makes its dependent ``scheduled`` and due (the scheduler's next tick
queues it); a dependency that ends ``dead`` or ``canceled`` cancels a dependent whose policy
is ``cancel``, with the reason in its ``last_error``, and counts as finished for one whose
policy is ``run``. An edge resolves once: a dependency retried and finished again changes
nothing. No waiting job is ever polled.

The new columns are nullable or have a constant default: adding them rewrites no row. The
status check is replaced ``NOT VALID`` and validated after, without blocking writes.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import UUID as PG_UUID

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

OLD_STATUSES = "'scheduled','queued','running','retrying','succeeded','dead','canceled'"
STATUSES = f"'waiting',{OLD_STATUSES}"

RELEASE = """
CREATE FUNCTION jobq_release_dependents() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    failed boolean := NEW.status <> 'succeeded';
    err jsonb := jsonb_build_object(
        'type', 'DependencyFailed', 'attempt', 0, 'dependency', NEW.id,
        'message', format('dependency %s ended %s', NEW.id, NEW.status));
BEGIN
    WITH edges AS (
        UPDATE job_dependencies SET resolved = NEW.status
        WHERE depends_on = NEW.id AND resolved IS NULL
        RETURNING job_id)
    UPDATE jobs d SET
        status = CASE WHEN failed AND d.on_dependency_failure = 'cancel' THEN 'canceled'
                      WHEN d.waiting_on <= 1 THEN 'scheduled' ELSE 'waiting' END,
        waiting_on = d.waiting_on - 1,
        run_at = CASE WHEN (failed AND d.on_dependency_failure = 'cancel') OR d.waiting_on > 1
                      THEN d.run_at ELSE greatest(d.run_at, now()) END,
        finished_at = CASE WHEN failed AND d.on_dependency_failure = 'cancel' THEN now() END,
        last_error = CASE WHEN failed AND d.on_dependency_failure = 'cancel' THEN err
                          ELSE d.last_error END,
        errors = CASE WHEN failed AND d.on_dependency_failure = 'cancel'
                      THEN d.errors || jsonb_build_array(err) ELSE d.errors END,
        updated_at = now()
    FROM edges
    WHERE d.id = edges.job_id AND d.status = 'waiting';
    RETURN NULL;
END $$
"""


def upgrade() -> None:
    op.add_column("jobs", sa.Column("depends_on", ARRAY(PG_UUID(as_uuid=True))))
    op.add_column("jobs", sa.Column("waiting_on", sa.Integer))
    op.add_column("jobs", sa.Column("on_dependency_failure", sa.Text))
    op.add_column(
        "jobs",
        sa.Column("has_dependents", sa.Boolean, nullable=False, server_default=sa.false()),
    )
    op.create_check_constraint(
        "jobs_dependency_policy_valid",
        "jobs",
        "on_dependency_failure IS NULL OR on_dependency_failure IN ('cancel', 'run')",
    )
    op.drop_constraint("jobs_status_valid", "jobs")
    op.execute(
        f"ALTER TABLE jobs ADD CONSTRAINT jobs_status_valid CHECK (status IN ({STATUSES})) NOT VALID"
    )
    op.execute("ALTER TABLE jobs VALIDATE CONSTRAINT jobs_status_valid")
    op.create_table(
        "job_dependencies",
        sa.Column("depends_on", PG_UUID(as_uuid=True), nullable=False),
        sa.Column(
            "job_id",
            PG_UUID(as_uuid=True),
            sa.ForeignKey("jobs.id", ondelete="CASCADE"),
            nullable=False,
        ),
        #: The status the dependency ended in; null while it has not.
        sa.Column("resolved", sa.Text),
        sa.PrimaryKeyConstraint("depends_on", "job_id"),
    )
    # The dependent's edges go with it when retention deletes it.
    op.create_index("job_dependencies_job", "job_dependencies", ["job_id"])
    op.execute(RELEASE)
    op.execute("""
        CREATE TRIGGER jobs_release_dependents AFTER UPDATE OF status ON jobs
        FOR EACH ROW WHEN (NEW.has_dependents AND OLD.status IS DISTINCT FROM NEW.status
                           AND NEW.status IN ('succeeded', 'dead', 'canceled'))
        EXECUTE FUNCTION jobq_release_dependents()
    """)


def downgrade() -> None:
    op.execute("DROP TRIGGER jobs_release_dependents ON jobs")
    op.execute("DROP FUNCTION jobq_release_dependents()")
    op.drop_table("job_dependencies")
    op.drop_constraint("jobs_status_valid", "jobs")
    op.create_check_constraint("jobs_status_valid", "jobs", f"status IN ({OLD_STATUSES})")
    op.drop_constraint("jobs_dependency_policy_valid", "jobs")
    for column in ("has_dependents", "on_dependency_failure", "waiting_on", "depends_on"):
        op.drop_column("jobs", column)
