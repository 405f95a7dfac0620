"""Jobs for HTTP workers: ``POST /v1/leases`` (docs/design.md §5).

A lease request takes what is due at once; one that may wait joins the process's waiters,
and one loop asks PostgreSQL for all of them together, every ``JOBQ_LEASE_POLL_SECONDS`` and
as soon as this process accepts a job, so a hundred idle workers cost one statement per
interval and tenant, not a hundred. A waiter that gives up while its jobs are being leased
never strands them: whatever no waiter takes is handed back to the queue at once, without
spending an attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from shared.db.leases import Claimed, LeaseStore
from shared.outbox import Outbox
from shared.telemetry import in_background

log = logging.getLogger("jobq.api")

#: (tenant, queues, types, lease seconds): waiters one statement can serve together.
Group = tuple[str, tuple[str, ...], tuple[str, ...] | None, float]


@dataclass(eq=False)
class Waiter:
    group: Group
    n: int
    done: asyncio.Future[list[Claimed]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    #: Set when the request stopped waiting; the loop then gives it nothing.
    gone: bool = False


class LeaseHub:
    """The HTTP workers waiting in this process, served by one loop."""

    def __init__(self, leases: LeaseStore, outbox: Outbox, interval: float) -> None:
        self.leases = leases
        self.outbox = outbox
        self.interval = interval
        self._waiting: list[Waiter] = []
        self._wake = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None

    async def lease(
        self,
        tenant: str,
        queues: Sequence[str],
        types: Sequence[str] | None,
        n: int,
        lease_seconds: float,
        wait_seconds: float,
    ) -> list[Claimed]:
        """Up to ``n`` jobs, leased now or within ``wait_seconds``; ``[]`` if none came."""
        group: Group = (
            tenant,
            tuple(queues),
            None if types is None else tuple(types),
            lease_seconds,
        )
        jobs = await self.leases.lease(tenant, group[1], group[2], n, lease_seconds)
        if jobs or wait_seconds <= 0:
            return jobs
        waiter = Waiter(group, n)
        self._waiting.append(waiter)
        self.poke()
        if self._loop is None or self._loop.done():
            self._loop = in_background(self._serve())
        try:
            await asyncio.wait([waiter.done], timeout=wait_seconds)
        finally:
            waiter.gone = True  # from here on the loop hands this waiter nothing
            self._waiting.remove(waiter)
        return waiter.done.result() if waiter.done.done() else []

    def poke(self) -> None:
        """Jobs may be due now (this process just accepted some): ask without waiting."""
        self._wake.set()

    async def _serve(self) -> None:
        while self._waiting:
            self._wake.clear()
            groups: dict[Group, list[Waiter]] = defaultdict(list)
            for w in self._waiting:
                groups[w.group].append(w)
            for (tenant, queues, types, seconds), waiters in groups.items():
                try:
                    jobs = await self.leases.lease(
                        tenant, queues, types, sum(w.n for w in waiters), seconds
                    )
                except Exception as exc:
                    log.warning("leasing for waiting workers failed", extra={"error": repr(exc)})
                    continue
                for w in waiters:  # no await from here to the hand-back: ``gone`` holds
                    if jobs and not w.gone and not w.done.done():
                        w.done.set_result(jobs[: w.n])
                        jobs = jobs[w.n :]
                if jobs:
                    await self._hand_back(jobs)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)

    async def _hand_back(self, jobs: list[Claimed]) -> None:
        """Jobs leased for waiters that left meanwhile: back to the queue, attempt unspent."""
        tickets = [t for job in jobs if (t := await self.leases.release(job)) is not None]
        await self.outbox.send(tickets, "released")

    async def close(self) -> None:
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop
