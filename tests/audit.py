"""An audit trail of every job's status changes, for the tests that check the guarantees.

A trigger on ``jobs`` appends one row per status change (and per lease change, so a re-claim
that kept the status would show) to ``jobq_audit``; the checker reads it back. It lives in the
tests, not in the product: it costs a row per transition that production does not need, and
it observes the product's writes without trusting them.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from shared.domain import TERMINAL, JobStatus, is_legal

INSTALL = """
CREATE TABLE IF NOT EXISTS jobq_audit (
    seq bigserial PRIMARY KEY,
    job_id uuid NOT NULL,
    from_status text,
    to_status text NOT NULL,
    attempts int NOT NULL,
    old_lease uuid,
    new_lease uuid,
    at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS jobq_audit_job ON jobq_audit (job_id, seq);

CREATE OR REPLACE FUNCTION jobq_audit_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO jobq_audit (job_id, from_status, to_status, attempts, new_lease)
        VALUES (NEW.id, NULL, NEW.status, NEW.attempts, NEW.lease_id);
    ELSIF OLD.status IS DISTINCT FROM NEW.status OR OLD.lease_id IS DISTINCT FROM NEW.lease_id THEN
        INSERT INTO jobq_audit (job_id, from_status, to_status, attempts, old_lease, new_lease)
        VALUES (NEW.id, OLD.status, NEW.status, NEW.attempts, OLD.lease_id, NEW.lease_id);
    END IF;
    RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS jobq_audit ON jobs;
CREATE TRIGGER jobq_audit AFTER INSERT OR UPDATE ON jobs
    FOR EACH ROW EXECUTE FUNCTION jobq_audit_row();
"""


async def install(conn: asyncpg.Connection) -> None:
    await conn.execute(INSTALL)


@dataclass(frozen=True, slots=True)
class Move:
    job_id: uuid.UUID
    from_status: JobStatus | None
    to_status: JobStatus
    attempts: int
    old_lease: uuid.UUID | None
    new_lease: uuid.UUID | None
    at: datetime


async def history(conn: asyncpg.Connection) -> dict[uuid.UUID, list[Move]]:
    """Every job's moves, in commit order of the rows (``seq``)."""
    rows = await conn.fetch(
        "SELECT job_id, from_status, to_status, attempts, old_lease, new_lease, at"
        " FROM jobq_audit ORDER BY seq"
    )
    out: dict[uuid.UUID, list[Move]] = defaultdict(list)
    for r in rows:
        out[r["job_id"]].append(
            Move(
                r["job_id"],
                JobStatus(r["from_status"]) if r["from_status"] else None,
                JobStatus(r["to_status"]),
                r["attempts"],
                r["old_lease"],
                r["new_lease"],
                r["at"],
            )
        )
    return out


def path_errors(moves: list[Move]) -> list[str]:
    """What is wrong with one job's history: every move must be legal, start where the last
    one ended, and every claim must take a lease id never used before on the job (the fence)."""
    errors: list[str] = []
    current: JobStatus | None = None
    leases: set[uuid.UUID] = set()
    for i, m in enumerate(moves):
        if i == 0:
            if m.from_status is not None:
                errors.append(f"first move {m.from_status}->{m.to_status} is not the insert")
        elif m.from_status is None or m.from_status != current:
            errors.append(f"move {i} starts at {m.from_status}, the job was {current}")
        elif not is_legal(m.from_status, m.to_status):
            errors.append(f"illegal move {m.from_status}->{m.to_status}")
        if m.to_status == JobStatus.RUNNING:
            if m.new_lease is None or m.new_lease in leases:
                errors.append(f"claim {i} reuses or lacks a lease id ({m.new_lease})")
            if m.new_lease is not None:
                leases.add(m.new_lease)
        current = m.to_status
    return errors


def terminal_moves(moves: list[Move]) -> int:
    return sum(1 for m in moves if m.to_status in TERMINAL)


def most_running_at_once(
    moves: dict[uuid.UUID, list[Move]], group_of: dict[uuid.UUID, str | None]
) -> dict[str, int]:
    """By group (a concurrency key, say), the most jobs that were ``running`` at one instant:
    from each move into ``running`` to the move out of it (a job still running counts till
    the end)."""
    edges: dict[str, list[tuple[datetime, int]]] = defaultdict(list)
    for job_id, history in moves.items():
        group = group_of.get(job_id)
        if group is None:
            continue
        for m in history:
            if m.to_status == JobStatus.RUNNING and m.from_status != JobStatus.RUNNING:
                edges[group].append((m.at, 1))
            elif m.from_status == JobStatus.RUNNING and m.to_status != JobStatus.RUNNING:
                edges[group].append((m.at, -1))
    return {group: peak(points) for group, points in edges.items()}


def peak(edges: list[tuple[datetime, int]]) -> int:
    """The highest running sum of ``(instant, +1 start | -1 end)`` edges, in time order (at
    one instant, an end sorts before a start)."""
    now = highest = 0
    for _, step in sorted(edges):
        now += step
        highest = max(highest, now)
    return highest
