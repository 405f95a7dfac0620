"""Admission limits: the token bucket's arithmetic and the long-poll cap, on a fake clock."""

from __future__ import annotations

import pytest

from services.api.limits import MAX_BUCKETS, SubmitLimiter, TooManyRequests, WaiterCap


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_client_may_burst_then_is_held_to_the_rate() -> None:
    clock = Clock()
    limiter = SubmitLimiter(rate=10, burst=50, clock=clock)
    limiter.take("a", 50)
    with pytest.raises(TooManyRequests) as refused:
        limiter.take("a", 1)
    assert refused.value.retry_after == 1
    clock.now = 0.5  # 5 tokens back
    limiter.take("a", 5)
    with pytest.raises(TooManyRequests):
        limiter.take("a", 1)


def test_retry_after_covers_the_whole_request() -> None:
    limiter = SubmitLimiter(rate=10, burst=100, clock=Clock())
    limiter.take("a", 100)
    with pytest.raises(TooManyRequests) as refused:
        limiter.take("a", 35)
    assert refused.value.retry_after == 4


def test_clients_have_separate_buckets_and_a_refusal_costs_nothing() -> None:
    clock = Clock()
    limiter = SubmitLimiter(rate=1, burst=10, clock=clock)
    limiter.take("a", 10)
    limiter.take("b", 10)
    with pytest.raises(TooManyRequests):
        limiter.take("a", 10)
    clock.now = 10
    limiter.take("a", 10)


def test_rate_zero_disables_the_limit() -> None:
    limiter = SubmitLimiter(rate=0, burst=0, clock=Clock())
    for _ in range(100):
        limiter.take("a", 1000)


def test_idle_buckets_are_dropped_so_memory_stays_bounded() -> None:
    clock = Clock()
    limiter = SubmitLimiter(rate=100, burst=100, clock=clock)
    for i in range(MAX_BUCKETS):
        limiter.take(f"c{i}", 1)
    clock.now = 5.0  # every bucket is full again
    limiter.take("new", 1)
    assert len(limiter._buckets) == 1


def test_the_waiter_cap_refuses_beyond_its_limits_and_frees_slots() -> None:
    cap = WaiterCap(limit=3, per_client=2)
    with cap.slot("a"), cap.slot("a"):
        with pytest.raises(TooManyRequests, match="this client") as refused, cap.slot("a"):
            pass
        assert refused.value.retry_after == 1
        with cap.slot("b"), pytest.raises(TooManyRequests, match="limit 3"), cap.slot("c"):
            pass
    assert cap.active == 0
    with cap.slot("a"):
        assert cap.active == 1


def test_the_busiest_buckets_are_kept_when_every_client_is_active() -> None:
    clock = Clock()
    limiter = SubmitLimiter(rate=1, burst=100, clock=clock)
    for i in range(MAX_BUCKETS):
        clock.now = i / MAX_BUCKETS
        limiter.take(f"c{i}", 1)
    limiter.take("new", 1)
    assert len(limiter._buckets) == MAX_BUCKETS // 2 + 1
    assert f"c{MAX_BUCKETS - 1}" in limiter._buckets
