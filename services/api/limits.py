"""Per-process admission limits: submits per client and per tenant, long-polls per client and
per tenant, failed token requests per client id and per source address.

Caps apply per tenant as well as per client, so the clients of one tenant together cannot use
up what the process shares with every other tenant. Pure and clock-injected, so their
arithmetic is tested without a server. Each API process keeps its own; with N replicas a
client may submit N times the rate, and guess N times as often.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

#: Keys a budget remembers at most: memory stays bounded however many clients there are.
MAX_BUCKETS = 10_000


class TooManyRequests(Exception):
    """Answered ``429`` with ``Retry-After``; ``error`` is an OAuth2 error code, for the token
    endpoint, whose answers all carry one."""

    def __init__(self, detail: str, retry_after: int, error: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after = retry_after
        self.error = error


@dataclass
class Budget:
    """``rate`` units per second per key, in bursts of up to ``burst``; ``rate`` 0: no limit.

    A token bucket kept as the generic cell rate algorithm: per key, the moment its bucket is
    full again (one float), so the wait for ``n`` units is exact, not rounded to a refill step.
    """

    rate: float
    burst: float
    clock: Callable[[], float] = time.monotonic
    _full_at: dict[str, float] = field(default_factory=dict)

    @classmethod
    def per_minute(cls, n: int, clock: Callable[[], float] = time.monotonic) -> Budget:
        """``n`` units at once, then one more every ``60 / n`` seconds (so a full budget and a
        minute's refill allow ``2n - 1`` in the first minute, ``n`` a minute after that)."""
        return cls(n / 60, n, clock)

    def wait(self, key: str, n: float = 1) -> float:
        """Seconds until ``key`` may spend ``n`` units; 0 if it may now."""
        if self.rate <= 0:
            return 0.0
        now = self.clock()
        full_at = max(self._full_at.get(key, now), now)
        return max(0.0, full_at + (n - self.burst) / self.rate - now)

    def spend(self, key: str, n: float = 1) -> None:
        """Take ``n`` units from ``key`` (whether it may is ``wait``'s say)."""
        if self.rate <= 0:
            return
        now = self.clock()
        if key not in self._full_at and len(self._full_at) >= MAX_BUCKETS:
            self._make_room(now)
        self._full_at[key] = max(self._full_at.get(key, now), now) + n / self.rate

    def refund(self, key: str, n: float = 1) -> None:
        """Give back ``n`` units spent (a bucket already full again stays so)."""
        if key in self._full_at:
            self._full_at[key] -= n / self.rate

    def _make_room(self, now: float) -> None:
        """Forget full buckets (as good as new ones); if too many keys are in debt even so,
        keep the half deepest in debt: the keys pressing hardest stay limited."""
        kept = {key: at for key, at in self._full_at.items() if at > now}
        if len(kept) >= MAX_BUCKETS:
            kept = dict(sorted(kept.items(), key=lambda item: item[1])[MAX_BUCKETS // 2 :])
        self._full_at = kept


def _admit(
    detail: str, spends: list[tuple[Budget, str]], n: float, error: str | None = None
) -> None:
    """Spend ``n`` from every ``(budget, key)``, or from none and raise ``TooManyRequests``
    with the seconds until all of them allow it."""
    wait = max(budget.wait(key, n) for budget, key in spends)
    if wait > 0:
        raise TooManyRequests(detail, max(1, math.ceil(wait)), error)
    for budget, key in spends:
        budget.spend(key, n)


@dataclass
class SubmitLimiter:
    """Jobs submitted per client and per tenant (a tenant may have many clients)."""

    per_client: Budget
    per_tenant: Budget

    def take(self, client: str, tenant: str, jobs: int) -> None:
        """Admit ``jobs`` jobs, or raise ``TooManyRequests`` with the wait; a refusal costs
        nothing."""
        _admit(
            "submit rate limit: "
            f"{self.per_client.rate:g} jobs/s per client (bursts of {self.per_client.burst:g}), "
            f"{self.per_tenant.rate:g} per tenant (bursts of {self.per_tenant.burst:g})",
            [(self.per_client, client), (self.per_tenant, tenant)],
            jobs,
        )


@dataclass
class WaiterCap:
    """At most ``limit`` long-polls open at once in this process, ``per_tenant`` per tenant
    and ``per_client`` per client, so no tenant, nor one client, can hold every slot."""

    limit: int
    per_tenant: int
    per_client: int
    active: int = 0
    _held: Counter[tuple[str, str]] = field(default_factory=Counter)

    @contextmanager
    def slot(self, client: str, tenant: str) -> Iterator[None]:
        owners = [("tenant", tenant, self.per_tenant), ("client", client, self.per_client)]
        if self.active >= self.limit:
            raise TooManyRequests(f"too many long-polls open (limit {self.limit})", 1)
        for kind, owner, cap in owners:
            if self._held[kind, owner] >= cap:
                raise TooManyRequests(f"too many long-polls open for this {kind} ({cap})", 1)
        self.active += 1
        self._held.update((kind, owner) for kind, owner, _ in owners)
        try:
            yield
        finally:
            self.active -= 1
            self._held.subtract((kind, owner) for kind, owner, _ in owners)
            for kind, owner, _ in owners:
                if not self._held[kind, owner]:
                    del self._held[kind, owner]


@dataclass
class TokenThrottle:
    """Failed ``POST /v1/auth/token`` attempts, per client id and per source address (one
    address may hide many clients behind a NAT, hence its larger budget).

    ``attempt`` spends from both budgets before the credentials are checked, and ``refund``
    gives that back: concurrent guesses cannot all pass the check before one is counted.
    """

    per_client: Budget
    per_address: Budget

    def attempt(self, client: str, address: str) -> None:
        """Count an attempt of ``client`` from ``address``, or raise ``TooManyRequests`` with
        the seconds until either may try again (a refused attempt costs nothing)."""
        _admit(
            "too many failed attempts for this client or from this address",
            [(self.per_client, client), (self.per_address, address)],
            1,
            error="slow_down",
        )

    def refund(self, client: str, address: str) -> None:
        """The attempt did not fail (the credentials were right, or the database failed): it
        costs nothing."""
        self.per_client.refund(client)
        self.per_address.refund(address)
