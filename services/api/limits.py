"""Per-process admission limits: a token bucket per client for submits, a cap on long-polls.

Pure and clock-injected, so their arithmetic is tested without a server. Each API process
keeps its own; with N replicas a client may submit N times the rate.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

#: Buckets kept at most: memory stays bounded however many clients there are.
MAX_BUCKETS = 10_000


class TooManyRequests(Exception):
    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after = retry_after


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
                self._drop_full(now)
            bucket = self._buckets[client] = _Bucket(float(self.burst), now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.at) * self.rate)
        bucket.at = now
        if bucket.tokens < jobs:
            wait = math.ceil((jobs - bucket.tokens) / self.rate)
            raise TooManyRequests(
                f"submit rate limit: {self.rate:g} jobs/s, bursts of {self.burst}", max(1, wait)
            )
        bucket.tokens -= jobs

    def _drop_full(self, now: float) -> None:
        """Forget buckets that are full again (as a new one would be); if too many clients
        are active even so, the least recently seen half."""
        refill = self.burst / self.rate
        kept = {c: b for c, b in self._buckets.items() if now - b.at < refill}
        if len(kept) >= MAX_BUCKETS:
            recent = sorted(kept.items(), key=lambda item: item[1].at)[MAX_BUCKETS // 2 :]
            kept = dict(recent)
        self._buckets = kept


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
