"""Dependency planning without a database: request order, cycles, and how new jobs start."""

from __future__ import annotations

import uuid

import pytest

from shared.dependencies import Wants, order, start
from shared.domain import JobStatus
from shared.errors import InvalidDependencies

S = JobStatus
A, B, C = (uuid.UUID(int=i) for i in (1, 2, 3))


def test_jobs_come_after_the_jobs_of_the_request_they_wait_for() -> None:
    wants = [Wants(after=[2]), Wants(), Wants(after=[1]), Wants(after=[0, 2])]
    seen = order(wants)
    assert sorted(seen) == [0, 1, 2, 3]
    for i, w in enumerate(wants):
        assert all(seen.index(a) < seen.index(i) for a in w.after)


@pytest.mark.parametrize(
    ("after", "message"),
    [
        ([[0]], "'after' makes a cycle: 0 -> 0"),
        ([[1], [2], [0]], "'after' makes a cycle: 0 -> 1 -> 2 -> 0"),
        ([[], [2], [3], [1]], "'after' makes a cycle: 1 -> 2 -> 3 -> 1"),
        ([[3]], "job 0: 'after' names 3; this request has jobs 0 to 0"),
    ],
)
def test_cycles_and_indices_out_of_range_are_refused_by_name(
    after: list[list[int]], message: str
) -> None:
    with pytest.raises(InvalidDependencies, match="^" + message.replace("(", r"\(")) as err:
        order([Wants(after=a) for a in after])
    assert err.value.key == "after"


def test_a_long_chain_is_ordered_without_recursion() -> None:
    n = 5000
    assert order([Wants(after=[i + 1] if i + 1 < n else []) for i in range(n)])[0] == n - 1


def test_unfinished_dependencies_make_a_waiting_start_counted_once_each() -> None:
    st = start([A, B, A, C], {A: S.RUNNING, B: S.SUCCEEDED, C: S.WAITING}, "cancel")
    assert (st.status, st.waiting_on) == (S.WAITING, 2)
    assert st.edges == [(A, None), (B, S.SUCCEEDED), (C, None)]


def test_dependencies_all_succeeded_start_the_job_as_submitted() -> None:
    st = start([A, B], {A: S.SUCCEEDED, B: S.SUCCEEDED}, "cancel")
    assert (st.status, st.waiting_on, st.error) == (None, 0, None)


@pytest.mark.parametrize("ended", [S.DEAD, S.CANCELED])
def test_a_dependency_that_failed_cancels_or_counts_as_finished_by_policy(ended: S) -> None:
    statuses = {A: ended, B: S.QUEUED}
    canceled = start([A, B], statuses, "cancel")
    assert canceled.status == S.CANCELED
    assert canceled.error is not None
    assert canceled.error["type"] == "DependencyFailed"
    assert canceled.error["dependency"] == str(A)
    assert canceled.error["message"] == f"dependency {A} ended {ended}"
    runs = start([A, B], statuses, "run")
    assert (runs.status, runs.waiting_on, runs.error) == (S.WAITING, 1, None)
    assert start([A], {A: ended}, "run").status is None
