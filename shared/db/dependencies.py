"""Submitting jobs that wait for others (docs/design.md §2.1), in one transaction: lock the
jobs they name, decide each new job's start (``shared.dependencies``), insert the jobs in that
status, record the edges and mark the jobs depended on.

The jobs named are locked ``FOR NO KEY UPDATE`` (in id order, so two such submits never
deadlock), the lock every status move takes: a dependency cannot finish between the moment
its status is read here and the moment its edge exists, so its finish either is seen here or
releases the new job through the trigger (migration 0013).
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from shared.db.records import RECORD_COLUMNS, JobRecord
from shared.dependencies import Wants, plan
from shared.domain import JobStatus
from shared.errors import InvalidDependencies

if TYPE_CHECKING:
    from shared.db.submits import NewJob

#: The tenant ``$1``'s jobs among ``$2``, locked against status moves.
LOCK = """
    SELECT id, status FROM jobs WHERE tenant = $1 AND id = ANY($2::uuid[])
    ORDER BY id FOR NO KEY UPDATE
"""

#: Edges ``(depends_on, job_id, resolved)``.
LINK = """
    INSERT INTO job_dependencies (depends_on, job_id, resolved)
    SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[])
"""

#: Mark ``$1`` as waited for (once: a flagged row is not written again).
MARK = "UPDATE jobs SET has_dependents = true WHERE id = ANY($1::uuid[]) AND NOT has_dependents"

#: What the new jobs wait for, given as JSON records. Their status was set by the insert; it
#: changes only where the request found one of its own jobs finished already (a resubmit):
#: a ``waiting`` job with nothing left to wait for is due.
STARTS = f"""
    UPDATE jobs j SET depends_on = v.deps, waiting_on = v.waiting, on_dependency_failure = v.policy,
        status = coalesce(v.status, CASE WHEN j.status = 'waiting' THEN 'scheduled' ELSE j.status END),
        run_at = CASE WHEN v.status IS NULL AND j.status = 'waiting' THEN greatest(j.run_at, now())
                      ELSE j.run_at END,
        finished_at = CASE WHEN v.status = 'canceled' THEN now() ELSE j.finished_at END,
        last_error = coalesce(v.err, j.last_error),
        errors = CASE WHEN v.err IS NULL THEN j.errors ELSE j.errors || jsonb_build_array(v.err) END
    FROM jsonb_to_recordset($1::jsonb)
        AS v(id uuid, status text, deps uuid[], waiting int, policy text, err jsonb)
    WHERE j.id = v.id
    RETURNING {RECORD_COLUMNS}
"""


async def named(conn: Any, tenant: str, wants: Sequence[Wants]) -> dict[uuid.UUID, JobStatus]:
    """The statuses of the existing jobs ``wants`` name, locked until the transaction ends;
    ``InvalidDependencies`` if one is not a job of ``tenant``."""
    ids = sorted({p for w in wants for p in w.depends_on})
    statuses = {row[0]: JobStatus(row[1]) for row in await conn.fetch(LOCK, tenant, ids)}
    missing = [str(p) for p in ids if p not in statuses]
    if missing:
        raise InvalidDependencies(f"depends_on names no job of yours: {', '.join(missing[:5])}")
    return statuses


def starting(
    jobs: Sequence[NewJob], wants: Sequence[Wants], statuses: dict[uuid.UUID, JobStatus]
) -> list[NewJob]:
    """The request's jobs, each to be inserted in the status it starts in."""
    starts = plan([j.id for j in jobs], wants, statuses)
    return [
        dataclasses.replace(j, status=st.status) if (st := starts.get(i)) and st.status else j
        for i, j in enumerate(jobs)
    ]


async def link(
    conn: Any,
    records: Sequence[tuple[JobRecord, bool]],
    wants: Sequence[Wants],
    statuses: dict[uuid.UUID, JobStatus],
) -> list[tuple[JobRecord, bool]]:
    """Record what the just-inserted jobs of one request (``records``, each with whether this
    request created it) wait for; returns them as they now are."""
    ids = [record.id for record, _ in records]
    found = {i: JobStatus(r.status) for i, (r, created) in enumerate(records) if not created}
    starts = plan(ids, wants, statuses, found)
    if not starts:
        return list(records)
    edges = [(p, ids[i], s) for i, st in starts.items() for p, s in st.edges]
    await conn.execute(LINK, [e[0] for e in edges], [e[1] for e in edges], [e[2] for e in edges])
    await conn.execute(MARK, sorted({p for p, _, resolved in edges if resolved is None}))
    rows = await conn.fetch(
        STARTS,
        json.dumps([
            {
                "id": str(ids[i]),
                "status": st.status,
                "deps": [str(p) for p, _ in st.edges],
                "waiting": st.waiting_on,
                "policy": wants[i].policy,
                "err": st.error,
            }
            for i, st in starts.items()
        ]),
    )  # fmt: skip
    now = {row[0]: JobRecord.of(row) for row in rows}
    return [(now.get(record.id, record), created) for record, created in records]
