"""Which held jobs the dispatcher releases, without I/O (docs/design.md §2.2).

Tenants take turns: each turn releases the next job of every tenant that has one left (the
tenant whose next job has waited longest goes first), so a tenant with ten thousand held jobs
and a tenant with three share the room of a pass equally, and the three go out at once. A
job is passed over while its concurrency key has as many jobs running or released as its
limit, or its tenant has used its running room or its tokens (starts per second).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class Candidate:
    """A held job, in its tenant's order (priority, then due time)."""

    id: uuid.UUID
    tenant: str
    run_at: datetime
    key: str | None = None
    key_limit: int | None = None


@dataclass(slots=True)
class Allowance:
    """What a tenant with limits may still start: jobs running at once beyond those running
    or released now, and tokens of its rate (``None``: no such limit)."""

    running: int | None = None
    tokens: float | None = None

    def allows(self) -> bool:
        return (self.running is None or self.running >= 1) and (
            self.tokens is None or self.tokens >= 1
        )

    def spend(self) -> None:
        if self.running is not None:
            self.running -= 1
        if self.tokens is not None:
            self.tokens -= 1


def choose(
    candidates: Sequence[Candidate],
    room: int,
    key_busy: Mapping[tuple[str, str], int],
    allowances: Mapping[str, Allowance],
) -> list[Candidate]:
    """Up to ``room`` candidates, in the order their tickets go out. ``key_busy`` counts the
    jobs of each ``(tenant, key)`` running or released; ``allowances`` are spent as jobs are
    chosen (the caller stores what is left of the tokens)."""
    queues: dict[str, list[Candidate]] = {}
    for c in candidates:
        queues.setdefault(c.tenant, []).append(c)
    order = sorted(queues, key=lambda t: (queues[t][0].run_at, t))
    busy = dict(key_busy)
    cursor = dict.fromkeys(order, 0)
    chosen: list[Candidate] = []
    while len(chosen) < room and order:
        still = []
        for tenant in order:
            if len(chosen) >= room:
                break
            allowance = allowances.get(tenant)
            if allowance is not None and not allowance.allows():
                continue  # its limits are spent for this pass
            picked = _next_fitting(queues[tenant], cursor, tenant, busy)
            if picked is None:
                continue
            chosen.append(picked)
            if allowance is not None:
                allowance.spend()
            still.append(tenant)
        order = still
    return chosen


def _next_fitting(
    jobs: list[Candidate], cursor: dict[str, int], tenant: str, busy: dict[tuple[str, str], int]
) -> Candidate | None:
    """The tenant's next job whose key has room (taking the slot), passing over the others."""
    while cursor[tenant] < len(jobs):
        job = jobs[cursor[tenant]]
        cursor[tenant] += 1
        if job.key is None:
            return job
        slot = (tenant, job.key)
        if busy.get(slot, 0) < (job.key_limit or 1):
            busy[slot] = busy.get(slot, 0) + 1
            return job
    return None
