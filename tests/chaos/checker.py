"""The invariants of docs/design.md §3, computed from the database after the system went quiet.

What the checker reads was written by observers the product does not control: the audit
trigger (``tests.audit``: every status and lease change), the handler's append-only
``chaos_executions`` and its fenced ``chaos_effects`` (``tests.chaos.handlers``), and the load
client's record of every key it was given a job id for.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from shared.domain import TERMINAL
from tests import audit

SCHEMA = """
CREATE TABLE chaos_executions (
    seq bigserial PRIMARY KEY, job_id uuid NOT NULL, attempt int NOT NULL,
    lease_id uuid NOT NULL, pid int NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE TABLE chaos_effects (
    seq bigserial PRIMARY KEY, job_id uuid NOT NULL, lease_id uuid NOT NULL, pid int NOT NULL,
    applied boolean NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp());
"""

#: Moves by which a worker itself ended its attempt (anything else took the lease away).
OWN_OUTCOMES = frozenset({"succeeded", "retrying", "dead", "canceled"})


async def install(conn: asyncpg.Connection) -> None:
    await audit.install(conn)
    await conn.execute(SCHEMA)


@dataclass
class Figures:
    """One scenario's outcome. ``problems()`` lists every violated invariant."""

    scenario: str
    submitted: int = 0
    lost: int = 0
    unexpected: int = 0
    key_duplicates: int = 0
    terminal_violations: int = 0
    illegal_paths: int = 0
    reexecuted_claims: int = 0
    duplicate_executions: int = 0
    allowed_duplicates: int = 0
    unexplained_duplicates: int = 0
    stale_effects: int = 0
    refused_effects: int = 0
    missing_effects: int = 0
    wrong_outcomes: int = 0
    #: Jobs that started before every job they depend on had finished.
    early_starts: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    http: Counter[int] = field(default_factory=Counter)
    recovery_seconds: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        found = [
            f"{name}={getattr(self, name)}"
            for name in (
                "lost", "unexpected", "key_duplicates", "terminal_violations", "illegal_paths",
                "reexecuted_claims", "unexplained_duplicates", "stale_effects",
                "missing_effects", "wrong_outcomes", "early_starts",
            )
            if getattr(self, name)
        ]  # fmt: skip
        if self.duplicate_executions > self.allowed_duplicates:
            found.append(
                f"duplicate_executions={self.duplicate_executions} > "
                f"in-flight in faulted processes={self.allowed_duplicates}"
            )
        if self.http[500]:
            found.append(f"HTTP 500 answers={self.http[500]}")
        return found

    def summary(self) -> str:
        http = " ".join(f"{k}:{v}" for k, v in sorted(self.http.items()))
        extra = " ".join(f"{k}={v}" for k, v in self.extra.items())
        recovery = "-" if self.recovery_seconds is None else f"{self.recovery_seconds:.1f}s"
        return (
            f"{self.scenario}: submitted={self.submitted} lost={self.lost} "
            f"dup_exec={self.duplicate_executions}/{self.allowed_duplicates} "
            f"stale_effects={self.stale_effects} refused={self.refused_effects} "
            f"recovery={recovery} statuses={dict(self.statuses)} http=[{http}] {extra}"
        ).rstrip()


def expected_status(payload: Any) -> str:
    """What the job's flags make of it: ``fail=always`` and ``kill`` end dead, the rest
    (``fail=once`` included) succeed."""
    flags = payload if isinstance(payload, dict) else {}
    return "dead" if flags.get("fail") == "always" or flags.get("kill") else "succeeded"


def expected_of(job_id: uuid.UUID, jobs: dict[uuid.UUID, Any]) -> str:
    """``expected_status``, where a job waiting for one that ends otherwise than succeeded is
    canceled if its policy says so (docs/design.md §2.1)."""
    row = jobs[job_id]
    if row["on_dependency_failure"] == "cancel" and any(
        expected_of(d, jobs) != "succeeded" for d in row["depends_on"] or ()
    ):
        return "canceled"
    return expected_status(row["payload"])


def flagged(payload: Any) -> bool:
    return isinstance(payload, dict) and bool(payload.get("fail") or payload.get("kill"))


async def check(
    conn: asyncpg.Connection,
    scenario: str,
    accepted: dict[str, uuid.UUID],
    faulted_pids: set[int],
    excused_leases: set[uuid.UUID],
) -> Figures:
    """Compute every figure. ``accepted`` maps each idempotency key the client was given a
    job id for to that id. An execution cut short (its lease ended by anything but its own
    outcome, so the job ran again) is a duplicate; it is excused when its process was killed or
    frozen (``faulted_pids``) or its lease was held when the fault struck (``excused_leases``:
    a database outage stops every heartbeat)."""
    f = Figures(scenario, submitted=len(accepted))
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    jobs = {r["id"]: r for r in await conn.fetch("SELECT * FROM jobs")}
    moves = await audit.history(conn)
    executions = await conn.fetch("SELECT * FROM chaos_executions ORDER BY seq")
    effects = await conn.fetch("SELECT * FROM chaos_effects ORDER BY seq")

    f.statuses = Counter(r["status"] for r in jobs.values())
    for key, job_id in accepted.items():
        row = jobs.get(job_id)
        if row is None or row["status"] not in ("succeeded", "dead", "canceled"):
            f.lost += 1
            f.examples.append(f"lost {key} -> {job_id}: {row and row['status']}")
        elif row["status"] != expected_of(job_id, jobs):
            f.wrong_outcomes += 1
            f.examples.append(f"{job_id} ended {row['status']}, payload {row['payload']}")
    known = set(accepted.values())
    f.unexpected = sum(1 for job_id in jobs if job_id not in known)
    per_key = Counter((r["tenant"], r["idempotency_key"]) for r in jobs.values())
    f.key_duplicates = sum(n - 1 for n in per_key.values() if n > 1)

    winner: dict[uuid.UUID, uuid.UUID | None] = {}
    ended_by_owner: set[uuid.UUID] = set()
    left_at: dict[uuid.UUID, Any] = {}
    for job_id, history in moves.items():
        if audit.terminal_moves(history) != 1:
            f.terminal_violations += 1
            f.examples.append(f"{job_id}: {audit.terminal_moves(history)} terminal moves")
        if errors := audit.path_errors(history):
            f.illegal_paths += 1
            f.examples.append(f"{job_id}: {errors}")
        for m in history:
            if m.from_status == "running" and m.old_lease is not None:
                left_at.setdefault(m.old_lease, m.at)
                if m.to_status in OWN_OUTCOMES:
                    ended_by_owner.add(m.old_lease)
                if m.to_status == "succeeded":
                    winner[job_id] = m.old_lease

    finished = {j: max(m.at for m in h if m.to_status in TERMINAL) for j, h in moves.items()
                if any(m.to_status in TERMINAL for m in h)}  # fmt: skip
    for job_id, row in jobs.items():
        started = [m.at for m in moves.get(job_id, []) if m.to_status == "running"]
        parents = [finished.get(d) for d in row["depends_on"] or ()]
        if started and any(p is None or p > started[0] for p in parents):
            f.early_starts += 1
            f.examples.append(f"{job_id}: started at {started[0]} before its dependencies ended")

    per_lease = Counter(e["lease_id"] for e in executions)
    f.reexecuted_claims = sum(n - 1 for n in per_lease.values() if n > 1)
    for e in executions:
        if e["lease_id"] in ended_by_owner:
            continue  # its attempt ended with an outcome (a failure is retried by design)
        excused = e["pid"] in faulted_pids or e["lease_id"] in excused_leases
        f.allowed_duplicates += excused
        row = jobs.get(e["job_id"])
        if row is not None and not flagged(row["payload"]):
            f.duplicate_executions += 1
            if not excused:
                f.unexplained_duplicates += 1
                path = " ".join(
                    f"{m.to_status}[{str(m.old_lease)[:4]}>{str(m.new_lease)[:4]}]@{m.at:%S.%f}"
                    for m in moves.get(e["job_id"], [])
                )
                f.examples.append(
                    f"{e['job_id']}: run by pid {e['pid']} lease {str(e['lease_id'])[:4]} at "
                    f"{e['at']:%S.%f} cut short, no fault; moves: {path}"
                )

    applied: Counter[tuple[uuid.UUID, uuid.UUID]] = Counter()
    for e in effects:
        if not e["applied"]:
            f.refused_effects += 1
            continue
        applied[(e["job_id"], e["lease_id"])] += 1
        left = left_at.get(e["lease_id"])
        if left is not None and left < e["at"]:
            f.stale_effects += 1
            f.examples.append(f"{e['job_id']}: effect by lease {e['lease_id']} after it ended")
    for job_id, row in jobs.items():
        if row["status"] == "succeeded" and not flagged(row["payload"]):
            lease = winner.get(job_id)
            if lease is None or applied[(job_id, lease)] != 1:
                f.missing_effects += 1
                f.examples.append(f"{job_id}: succeeded without exactly one fenced effect")
    return f
