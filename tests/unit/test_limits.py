"""Admission limits: the token bucket's arithmetic, the long-poll cap and the token endpoint's
failure budgets, on a fake clock."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.api.limits import (
    MAX_BUCKETS,
    Budget,
    SubmitLimiter,
    TokenThrottle,
    TooManyRequests,
    WaiterCap,
)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def per_client(rate: float, burst: float, clock: Clock) -> SubmitLimiter:
    """A limiter whose tenant budget is off."""
    return SubmitLimiter(Budget(rate, burst, clock), Budget(0, 0, clock))


def test_a_client_may_burst_then_is_held_to_the_rate() -> None:
    clock = Clock()
    limiter = per_client(10, 50, clock)
    limiter.take("a", "t", 50)
    with pytest.raises(TooManyRequests) as refused:
        limiter.take("a", "t", 1)
    assert refused.value.retry_after == 1
    clock.now = 0.5  # 5 tokens back
    limiter.take("a", "t", 5)
    with pytest.raises(TooManyRequests):
        limiter.take("a", "t", 1)


def test_retry_after_covers_the_whole_request() -> None:
    limiter = per_client(10, 100, Clock())
    limiter.take("a", "t", 100)
    with pytest.raises(TooManyRequests) as refused:
        limiter.take("a", "t", 35)
    assert refused.value.retry_after == 4


@given(
    rate=st.floats(0.1, 1000),
    burst=st.integers(1, 5000),
    spent=st.lists(st.integers(1, 5000), min_size=1, max_size=5),
    want=st.integers(1, 5000),
)
def test_after_retry_after_seconds_the_refused_request_is_admitted(
    rate: float, burst: int, spent: list[int], want: int
) -> None:
    """``Retry-After`` is computed, never a constant: waiting it out is always enough (a
    request larger than the burst can never pass; settings keep batches within bursts)."""
    clock = Clock()
    limiter = per_client(rate, burst, clock)
    want = min(want, burst)
    for n in spent:
        with contextlib.suppress(TooManyRequests):
            limiter.take("a", "t", min(n, burst))
    try:
        limiter.take("a", "t", want)
    except TooManyRequests as refused:
        clock.now += refused.retry_after
        limiter.take("a", "t", want)


def test_clients_have_separate_buckets_and_a_refusal_costs_nothing() -> None:
    clock = Clock()
    limiter = per_client(1, 10, clock)
    limiter.take("a", "t", 10)
    limiter.take("b", "t", 10)
    with pytest.raises(TooManyRequests):
        limiter.take("a", "t", 10)
    clock.now = 10
    limiter.take("a", "t", 10)


def test_the_clients_of_one_tenant_share_its_budget() -> None:
    clock = Clock()
    limiter = SubmitLimiter(Budget(10, 100, clock), Budget(10, 150, clock))
    limiter.take("a", "acme", 100)
    limiter.take("b", "acme", 50)
    with pytest.raises(TooManyRequests) as refused:  # b's own budget has 50 left
        limiter.take("b", "acme", 20)
    assert refused.value.retry_after == 2
    limiter.take("c", "globex", 100)  # another tenant is not held back
    clock.now = 2.0
    limiter.take("b", "acme", 20)


def test_rate_zero_disables_the_limit() -> None:
    limiter = SubmitLimiter(Budget(0, 0, Clock()), Budget(0, 0, Clock()))
    for _ in range(100):
        limiter.take("a", "t", 1000)


def test_idle_buckets_are_dropped_so_memory_stays_bounded() -> None:
    clock = Clock()
    budget = Budget(100, 100, clock)
    for i in range(MAX_BUCKETS):
        budget.spend(f"c{i}")
    clock.now = 5.0  # every bucket is full again
    budget.spend("new")
    assert len(budget._full_at) == 1


def test_the_waiter_cap_refuses_beyond_its_limits_and_frees_slots() -> None:
    cap = WaiterCap(limit=4, per_tenant=3, per_client=2)
    with cap.slot("a", "acme"), cap.slot("a", "acme"):
        with pytest.raises(TooManyRequests, match="this client") as refused, cap.slot("a", "acme"):
            pass
        assert refused.value.retry_after == 1
        with cap.slot("b", "acme"):
            with pytest.raises(TooManyRequests, match="this tenant"), cap.slot("c", "acme"):
                pass
            with (
                cap.slot("d", "globex"),
                pytest.raises(TooManyRequests, match="limit 4"),
                cap.slot("e", "initech"),
            ):
                pass
    assert cap.active == 0
    assert not cap._held
    with cap.slot("a", "acme"):
        assert cap.active == 1


def test_the_busiest_buckets_are_kept_when_every_client_is_active() -> None:
    clock = Clock()
    budget = Budget(1, 100, clock)
    for i in range(MAX_BUCKETS):
        clock.now = i / MAX_BUCKETS
        budget.spend(f"c{i}")
    budget.spend("new")
    assert len(budget._full_at) == MAX_BUCKETS // 2 + 1
    assert f"c{MAX_BUCKETS - 1}" in budget._full_at


def throttle(clock: Clock, per_client: int = 10, per_address: int = 30) -> TokenThrottle:
    return TokenThrottle(
        Budget.per_minute(per_client, clock), Budget.per_minute(per_address, clock)
    )


def refused(throttle: TokenThrottle, client: str, address: str = "ip") -> TooManyRequests:
    with pytest.raises(TooManyRequests) as caught:
        throttle.attempt(client, address)
    return caught.value


def test_a_failure_budget_allows_its_failures_a_minute_and_refills_one_at_a_time() -> None:
    clock = Clock()
    budget = Budget.per_minute(10, clock)
    for _ in range(10):
        assert budget.wait("a") == 0
        budget.spend("a")
    assert budget.wait("a") == 6.0  # one failure back every 60 / 10 s
    clock.now = 2.0
    assert budget.wait("a") == 4.0
    clock.now = 6.0
    assert budget.wait("a") == 0
    budget.spend("a")
    assert budget.wait("a") == 6.0
    clock.now = 72.0  # a minute idle: the whole budget is back, not more
    for _ in range(10):
        assert budget.wait("a") == 0
        budget.spend("a")
    assert budget.wait("a") == 6.0


def test_retry_after_is_the_time_until_the_next_attempt_is_allowed() -> None:
    clock = Clock()
    guard = throttle(clock)
    for _ in range(10):
        guard.attempt("a", "ip")
    first = refused(guard, "a")
    assert (first.retry_after, first.error) == (6, "slow_down")
    clock.now = 5.5
    assert refused(guard, "a").retry_after == 1  # 0.5 s, rounded up
    clock.now = 6.0  # refused attempts cost nothing: the budget refilled on time
    guard.attempt("a", "ip")
    assert refused(guard, "a").retry_after == 6


def test_client_ids_and_addresses_have_separate_budgets() -> None:
    clock = Clock()
    guard = throttle(clock, per_client=10, per_address=15)
    for _ in range(10):
        guard.attempt("a", "ip")
    assert refused(guard, "a").retry_after == 6
    for _ in range(5):  # another client id from the same address, until the address is spent
        guard.attempt("b", "ip")
    assert refused(guard, "b").retry_after == 4  # one more every 60 / 15 s
    assert refused(guard, "a").retry_after == 6  # the longer of the two waits
    guard.attempt("b", "other-ip")
    guard.attempt("c", "other-ip")


def test_an_attempt_that_does_not_fail_is_refunded_but_one_in_flight_counts() -> None:
    clock = Clock()
    guard = throttle(clock)
    for _ in range(100):
        guard.attempt("a", "ip")
        guard.refund("a", "ip")
    for _ in range(10):  # ten guesses in flight at once, none answered yet
        guard.attempt("a", "ip")
    refused(guard, "a")
    guard.refund("a", "ip")
    guard.attempt("a", "ip")
    refused(guard, "a")


def test_a_refund_never_raises_a_budget_above_its_size() -> None:
    clock = Clock()
    guard = throttle(clock)
    guard.attempt("a", "ip")
    clock.now = 100.0  # whole again long ago
    guard.refund("a", "ip")
    for _ in range(10):
        guard.attempt("a", "ip")
    refused(guard, "a")


def test_zero_turns_a_failure_budget_off() -> None:
    guard = throttle(Clock(), per_client=0, per_address=0)
    for _ in range(1000):
        guard.attempt("a", "ip")
    assert not guard.per_client._full_at


def test_whole_failure_budgets_are_dropped_so_memory_stays_bounded() -> None:
    clock = Clock()
    budget = Budget.per_minute(10, clock)
    for i in range(MAX_BUCKETS):
        budget.spend(f"c{i}")
    clock.now = 6.0  # every budget is whole again
    budget.spend("new")
    assert len(budget._full_at) == 1


def test_the_most_spent_failure_budgets_are_kept_when_every_key_is_in_debt() -> None:
    budget = Budget.per_minute(10, Clock())
    for i in range(MAX_BUCKETS - 1):
        budget.spend(f"c{i}")
    for _ in range(10):
        budget.spend("guessed")
    budget.spend("new")
    assert len(budget._full_at) == MAX_BUCKETS // 2 + 1
    assert budget.wait("guessed") == 6.0
