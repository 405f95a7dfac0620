"""The state machine and retry arithmetic, without I/O."""

from __future__ import annotations

import itertools

import pytest

from shared.domain import (
    LEGAL,
    TERMINAL,
    FailureDecision,
    JobStatus,
    backoff,
    check_move,
    decide_failure,
    is_legal,
)
from shared.errors import IllegalTransition

S = JobStatus

#: docs/design.md §2, written out independently of ``LEGAL``.
EXPECTED_MOVES = {
    (S.WAITING, S.SCHEDULED), (S.WAITING, S.CANCELED),
    (S.SCHEDULED, S.QUEUED), (S.SCHEDULED, S.CANCELED),
    (S.QUEUED, S.RUNNING), (S.QUEUED, S.CANCELED), (S.QUEUED, S.DEAD),
    (S.RUNNING, S.SUCCEEDED), (S.RUNNING, S.RETRYING), (S.RUNNING, S.DEAD),
    (S.RUNNING, S.QUEUED), (S.RUNNING, S.CANCELED),
    (S.RETRYING, S.QUEUED), (S.RETRYING, S.CANCELED),
    (S.DEAD, S.QUEUED), (S.CANCELED, S.QUEUED),
}  # fmt: skip


@pytest.mark.parametrize(("current", "target"), list(itertools.product(S, S)))
def test_every_pair_of_statuses_is_legal_exactly_when_the_spec_says(
    current: JobStatus, target: JobStatus
) -> None:
    expected = (current, target) in EXPECTED_MOVES
    assert is_legal(current, target) is expected
    if expected:
        check_move(current, target)
    else:
        with pytest.raises(IllegalTransition):
            check_move(current, target)


def test_succeeded_is_final_and_dead_or_canceled_only_go_back_to_queued() -> None:
    assert LEGAL[S.SUCCEEDED] == frozenset()
    assert {S.SUCCEEDED, S.DEAD, S.CANCELED} == TERMINAL
    assert LEGAL[S.DEAD] == LEGAL[S.CANCELED] == frozenset({S.QUEUED})


@pytest.mark.parametrize("attempt", [1, 2, 3, 5, 10, 30, 1000])
def test_backoff_stays_within_full_jitter_bounds(attempt: int) -> None:
    ceiling = min(600.0, 2.0 * 2 ** (attempt - 1))
    assert backoff(attempt, 2.0, 600.0, rand=lambda: 0.0) == 0.0
    assert backoff(attempt, 2.0, 600.0, rand=lambda: 0.999999) == pytest.approx(ceiling * 0.999999)
    for _ in range(200):
        assert 0.0 <= backoff(attempt, 2.0, 600.0) <= ceiling


def test_backoff_grows_exponentially_until_the_cap() -> None:
    top = [backoff(a, 2.0, 600.0, rand=lambda: 1.0) for a in range(1, 12)]
    assert top[:5] == [2.0, 4.0, 8.0, 16.0, 32.0]
    assert top[-1] == 600.0


def test_a_failure_with_attempts_left_is_retried_after_backoff() -> None:
    decision = decide_failure(1, 3, permanent=False, base=2.0, cap=600.0, rand=lambda: 0.5)
    assert decision == FailureDecision(S.RETRYING, 1.0)


def test_the_last_attempt_or_a_permanent_failure_is_dead() -> None:
    assert decide_failure(3, 3, permanent=False, base=2, cap=60).status == S.DEAD
    assert decide_failure(1, 3, permanent=True, base=2, cap=60).status == S.DEAD
