"""Per-process admission limits: a token bucket per client for submits, a cap on long-polls,
a budget of failed token requests per client id and per source address.

Pure and clock-injected, so their arithmetic is tested without a server. Each API process
keeps its own; with N replicas a client may submit N times the rate, and guess N times as often.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TypeVar

#: Buckets kept at most: memory stays bounded however many clients there are.
MAX_BUCKETS = 10_000
#: A failure budget of N allows N failed attempts in any such window.
FAILURE_WINDOW_SECONDS = 60.0

_Entry = TypeVar("_Entry")


class TooManyRequests(Exception):
    """Answered ``429`` with ``Retry-After``; ``error`` is an OAuth2 error code, for the token
    endpoint, whose answers all carry one."""

    def __init__(self, detail: str, retry_after: int, error: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after = retry_after
        self.error = error


def _make_room(
    entries: dict[str, _Entry], idle: Callable[[_Entry], bool], rank: Callable[[_Entry], float]
) -> dict[str, _Entry]:
    """``entries`` without the idle ones (as good as new ones); if still ``MAX_BUCKETS`` are
    left, only the half ranking highest."""
    kept = {key: entry for key, entry in entries.items() if not idle(entry)}
    if len(kept) >= MAX_BUCKETS:
        kept = dict(sorted(kept.items(), key=lambda item: rank(item[1]))[MAX_BUCKETS // 2 :])
    return kept


@dataclass
class _Bucket:
    tokens: float
    at: float


@dataclass
class SubmitLimiter:
    """``rate`` jobs per second per client, with bursts of up to ``burst`` jobs."""

    rate: float
    burst: int
    clock: Callable[[], float] = time.monotonic
    _buckets: dict[str, _Bucket] = field(default_factory=dict)

    def take(self, client: str, jobs: int) -> None:
        """Admit ``jobs`` jobs from ``client``, or raise ``TooManyRequests`` with the wait."""
        if self.rate <= 0:
            return
        now = self.clock()
        bucket = self._buckets.get(client)
        if bucket is None:
            if len(self._buckets) >= MAX_BUCKETS:
                # Full buckets are forgotten; if too many clients are active even so, the
                # least recently seen half.
                refill = self.burst / self.rate
                self._buckets = _make_room(
                    self._buckets, lambda b: now - b.at >= refill, lambda b: b.at
                )
            bucket = self._buckets[client] = _Bucket(float(self.burst), now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.at) * self.rate)
        bucket.at = now
        if bucket.tokens < jobs:
            wait = math.ceil((jobs - bucket.tokens) / self.rate)
            raise TooManyRequests(
                f"submit rate limit: {self.rate:g} jobs/s, bursts of {self.burst}", max(1, wait)
            )
        bucket.tokens -= jobs


@dataclass
class WaiterCap:
    """At most ``limit`` long-polls open at once in this process, ``per_client`` per client,
    so one client cannot hold every slot."""

    limit: int
    per_client: int
    active: int = 0
    _by_client: Counter[str] = field(default_factory=Counter)

    @contextmanager
    def slot(self, client: str) -> Iterator[None]:
        if self.active >= self.limit:
            raise TooManyRequests(f"too many long-polls open (limit {self.limit})", 1)
        if self._by_client[client] >= self.per_client:
            raise TooManyRequests(
                f"too many long-polls open for this client ({self.per_client})", 1
            )
        self.active += 1
        self._by_client[client] += 1
        try:
            yield
        finally:
            self.active -= 1
            self._by_client[client] -= 1
            if not self._by_client[client]:
                del self._by_client[client]


@dataclass
class FailureBudget:
    """At most ``per_minute`` failures per key in any minute, the budget refilling evenly
    (one failure every ``60 / per_minute`` seconds); 0: no limit.

    Kept per key as the moment the budget is whole again (the generic cell rate algorithm):
    one float, and the wait is exact, with no rounding of a refill rate.
    """

    per_minute: int
    clock: Callable[[], float] = time.monotonic
    _whole_at: dict[str, float] = field(default_factory=dict)

    @property
    def _interval(self) -> float:
        return FAILURE_WINDOW_SECONDS / self.per_minute

    def wait(self, key: str) -> float:
        """Seconds until ``key`` may fail once more; 0 if it may now."""
        whole_at = self._whole_at.get(key)
        if self.per_minute <= 0 or whole_at is None:
            return 0.0
        return max(0.0, whole_at + self._interval - FAILURE_WINDOW_SECONDS - self.clock())

    def spend(self, key: str) -> None:
        """Count one failure of ``key`` (whether its budget allows one is ``wait``'s say)."""
        if self.per_minute <= 0:
            return
        now = self.clock()
        if key not in self._whole_at and len(self._whole_at) >= MAX_BUCKETS:
            # Whole budgets are forgotten; if too many keys are in debt even so, those nearest
            # to whole: the keys being guessed at hardest stay throttled.
            self._whole_at = _make_room(self._whole_at, lambda at: at <= now, lambda at: at)
        self._whole_at[key] = max(self._whole_at.get(key, now), now) + self._interval

    def refund(self, key: str) -> None:
        """Give back one ``spend``: a budget already whole again stays so."""
        if key in self._whole_at:
            self._whole_at[key] -= self._interval


@dataclass
class TokenThrottle:
    """Failed ``POST /v1/auth/token`` attempts, per client id and per source address (one
    address may hide many clients behind a NAT, hence its larger budget).

    ``attempt`` spends from both budgets before the credentials are checked, and ``refund``
    gives that back: concurrent guesses cannot all pass the check before one is counted.
    """

    per_client: FailureBudget
    per_address: FailureBudget

    def attempt(self, client: str, address: str) -> None:
        """Count an attempt of ``client`` from ``address``, or raise ``TooManyRequests`` with
        the seconds until either may try again (a refused attempt costs nothing)."""
        wait = max(self.per_client.wait(client), self.per_address.wait(address))
        if wait > 0:
            raise TooManyRequests(
                "too many failed attempts for this client or from this address",
                math.ceil(wait),
                error="slow_down",
            )
        self.per_client.spend(client)
        self.per_address.spend(address)

    def refund(self, client: str, address: str) -> None:
        """The attempt did not fail (the credentials were right, or the database failed): it
        costs nothing."""
        self.per_client.refund(client)
        self.per_address.refund(address)
