"""Job dependencies without I/O (docs/design.md §2.1): the order of a request's jobs, and the
state each new job starts in given the jobs it waits for.

Waiting jobs are released later by the database itself (the trigger of migration 0013); what
is decided here is only the start, so that a job naming a dependency that has already failed
ends the same way as one whose dependency fails a moment later.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from shared.domain import TERMINAL, JobStatus
from shared.errors import InvalidDependencies

#: What a dependency that ends dead or canceled does to the job waiting for it.
Policy = Literal["cancel", "run"]


@dataclass(frozen=True, slots=True)
class Wants:
    """What one job of a request waits for: jobs that exist (``depends_on``) and jobs of the
    same request, by their index in it (``after``)."""

    depends_on: Sequence[uuid.UUID] = ()
    after: Sequence[int] = ()
    policy: Policy = "cancel"

    @property
    def any(self) -> bool:
        return bool(self.depends_on or self.after)


@dataclass(frozen=True, slots=True)
class Start:
    """How a new job with dependencies starts: ``waiting`` on ``waiting_on`` jobs, ``canceled``
    (a dependency had already failed: ``error`` says which), or as submitted (``status`` None:
    every dependency had finished)."""

    status: JobStatus | None
    waiting_on: int
    #: Each dependency with the status it ended in, or ``None`` while it has not.
    edges: list[tuple[uuid.UUID, JobStatus | None]] = field(default_factory=list)
    error: dict[str, Any] | None = None


def order(wants: Sequence[Wants]) -> list[int]:
    """The request's jobs, each after those of the request it waits for; ``InvalidDependencies``
    for an index out of range or a cycle (named)."""
    n = len(wants)
    for i, w in enumerate(wants):
        bad = [a for a in w.after if not 0 <= a < n]
        if bad:
            raise InvalidDependencies(
                f"job {i}: 'after' names {bad[0]}; this request has jobs 0 to {n - 1}", "after"
            )
    done: list[int] = []
    state = [0] * n  # 0 new, 1 on the path, 2 placed
    for root in range(n):
        if state[root]:
            continue
        path, stack = [root], [iter(wants[root].after)]
        state[root] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                stack.pop()
                node = path.pop()
                state[node] = 2
                done.append(node)
            elif state[nxt] == 1:
                cycle = [*path[path.index(nxt) :], nxt]
                raise InvalidDependencies(
                    "'after' makes a cycle: " + " -> ".join(map(str, cycle)), "after"
                )
            elif state[nxt] == 0:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(wants[nxt].after))
    return done


def plan(
    ids: Sequence[uuid.UUID],
    wants: Sequence[Wants],
    statuses: Mapping[uuid.UUID, JobStatus],
    found: Mapping[int, JobStatus] | None = None,
) -> dict[int, Start]:
    """The start of each job of a request (``ids``, by index) that waits for something, given
    the ``statuses`` of the existing jobs it names and, in ``found``, the jobs of the request
    that existed already (an idempotent resubmit), which keep theirs."""
    known = dict(statuses)
    found = found or {}
    starts: dict[int, Start] = {}
    for i in order(wants):
        if i in found:
            known[ids[i]] = found[i]
            continue
        if wants[i].any:
            parents = [*wants[i].depends_on, *(ids[a] for a in wants[i].after)]
            starts[i] = start(parents, known, wants[i].policy)
        begun = starts.get(i)
        # Any unfinished status will do for what waits for it: queued stands for them all.
        known[ids[i]] = (begun and begun.status) or JobStatus.QUEUED
    return starts


def start(
    parents: Sequence[uuid.UUID], statuses: Mapping[uuid.UUID, JobStatus], policy: Policy
) -> Start:
    """The start of a job waiting for ``parents``, whose statuses now are ``statuses``."""
    unique = list(dict.fromkeys(parents))
    edges = [(p, statuses[p] if statuses[p] in TERMINAL else None) for p in unique]
    failed = next((p for p, s in edges if s is not None and s != JobStatus.SUCCEEDED), None)
    if failed is not None and policy == "cancel":
        return Start(JobStatus.CANCELED, 0, edges, dependency_failed(failed, statuses[failed]))
    waiting = sum(s is None for _, s in edges)
    return Start(JobStatus.WAITING if waiting else None, waiting, edges)


def dependency_failed(dependency: uuid.UUID, status: JobStatus) -> dict[str, Any]:
    """The error a job canceled by its dependency records (the trigger writes the same)."""
    return {
        "type": "DependencyFailed",
        "attempt": 0,
        "dependency": str(dependency),
        "message": f"dependency {dependency} ended {status}",
    }
