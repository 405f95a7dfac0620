"""The job state machine: statuses, the only legal moves, and retry decisions. Pure, no I/O.

Every service and the store consult this module; SQL guards mirror ``LEGAL`` (each UPDATE names
the status it expects), and ``tests/unit/test_domain.py`` checks every pair of statuses.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from shared.errors import IllegalTransition


class JobStatus(StrEnum):
    #: Waits for the jobs it depends on (docs/design.md §2.1); released by the move that
    #: finishes the last of them.
    WAITING = "waiting"
    SCHEDULED = "scheduled"
    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    DEAD = "dead"
    CANCELED = "canceled"


S = JobStatus
TERMINAL: Final = frozenset({S.SUCCEEDED, S.DEAD, S.CANCELED})
CANCELABLE: Final = frozenset({S.WAITING, S.SCHEDULED, S.QUEUED, S.RETRYING})
RETRYABLE_BY_API: Final = frozenset({S.DEAD, S.CANCELED})

#: status -> statuses it may move to (docs/design.md §2). Running -> canceled is a cancel request honoured
#: at the next heartbeat; queued -> dead is the scheduler killing a job no worker can decode;
#: waiting -> scheduled is the release of a job whose dependencies finished (due at once, or
#: at its ``run_at``), waiting -> canceled also a dependency that failed.
LEGAL: Final[Mapping[JobStatus, frozenset[JobStatus]]] = {
    S.WAITING: frozenset({S.SCHEDULED, S.CANCELED}),
    S.SCHEDULED: frozenset({S.QUEUED, S.CANCELED}),
    S.QUEUED: frozenset({S.RUNNING, S.CANCELED, S.DEAD}),
    S.RUNNING: frozenset({S.SUCCEEDED, S.RETRYING, S.DEAD, S.QUEUED, S.CANCELED}),
    S.RETRYING: frozenset({S.QUEUED, S.CANCELED}),
    S.SUCCEEDED: frozenset(),
    S.DEAD: frozenset({S.QUEUED}),
    S.CANCELED: frozenset({S.QUEUED}),
}


def is_legal(current: JobStatus, target: JobStatus) -> bool:
    return target in LEGAL[current]


def check_move(current: JobStatus, target: JobStatus) -> None:
    """Raise ``IllegalTransition`` unless ``current -> target`` is a legal move."""
    if not is_legal(current, target):
        raise IllegalTransition(f"a {current} job cannot become {target}")


def backoff(
    attempt: int, base: float, cap: float, rand: Callable[[], float] = random.random
) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**(attempt-1))] seconds."""
    exponent = min(max(attempt - 1, 0), 62)  # 2**62 * base already exceeds any sane cap
    return rand() * min(cap, base * 2.0**exponent)


@dataclass(frozen=True, slots=True)
class FailureDecision:
    """What a failed attempt leads to: ``retrying`` after ``delay_seconds``, or ``dead``."""

    status: JobStatus
    delay_seconds: float


def decide_failure(
    attempts: int,
    max_attempts: int,
    *,
    permanent: bool,
    base: float,
    cap: float,
    rand: Callable[[], float] = random.random,
) -> FailureDecision:
    """Retry with backoff while attempts remain and the error is not permanent; else dead."""
    if permanent or attempts >= max_attempts:
        return FailureDecision(S.DEAD, 0.0)
    return FailureDecision(S.RETRYING, backoff(attempts, base, cap, rand))
