"""One loop that keeps time for every job (docs/design.md §3.1, §3.4).

Each tick, in batches taken with ``FOR UPDATE SKIP LOCKED`` so that any number of schedulers
can run side by side without taking the same job twice:

0. cron schedules whose tick has come submit their jobs (docs/design.md §9);
1. due ``scheduled`` and ``retrying`` jobs become ``queued`` and are published;
2. ``running`` jobs whose lease expired are queued again (or, with no attempts left, dead);
3. ``queued`` (and ``dead``) jobs whose publish was never confirmed are published again;
4. ``queued`` jobs whose confirmed ticket is old while their broker queue shows nothing ready
   (a purged or deleted queue) are published again. A long, healthy backlog has messages
   ready, so it is never flooded with duplicates.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import aiormq
from opentelemetry.trace import NoOpTracer

from shared.db.errors import is_transient
from shared.db.schedules import ScheduleStore
from shared.liveness import Liveness
from shared.metrics import Metrics

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

    from shared.config import Settings
    from shared.db.sweeps import SweepStore
    from shared.messaging import Broker, Ticket
    from shared.outbox import Outbox

log = logging.getLogger("jobq.scheduler")

#: Batches per step per tick: bounds one tick's work so every step gets its turn.
MAX_BATCHES = 20
#: The scheduler's one loop, as its liveness knows it.
TICK = "tick"
#: The steps that send tickets again (``jobq_tickets_republished_total``'s reasons).
REPUBLISHED = ("unconfirmed", "lost")


class Scheduler:
    def __init__(
        self,
        settings: Settings,
        sweeps: SweepStore,
        outbox: Outbox,
        broker: Broker,
        tracer: Tracer | None,
        metrics: Metrics | None = None,
        liveness: Liveness | None = None,
    ):
        self.settings = settings
        self.sweeps = sweeps
        self.schedules = ScheduleStore(sweeps.engine)
        self.outbox = outbox
        self.broker = broker
        #: Without one (nothing exports spans) a tick is no span.
        self.tracer = tracer or NoOpTracer()
        self.metrics = metrics or Metrics("scheduler")
        self.liveness = liveness or Liveness(settings.liveness_deadline_seconds, [TICK])
        self.stats: Counter[str] = Counter()

    async def run(self, stop: asyncio.Event) -> None:
        log.info("scheduler running", extra={"interval": self.settings.scheduler_interval_seconds})
        while not stop.is_set():
            self.liveness.beat(TICK)  # a failed tick came round all the same
            try:
                await self.tick()
            except Exception as exc:
                # PostgreSQL or RabbitMQ unavailable: the next tick retries; nothing is lost,
                # every job the tick did not finish is still in the state that selects it.
                if is_transient(exc):
                    log.warning("tick failed; PostgreSQL unavailable", extra={"error": repr(exc)})
                else:
                    log.exception("tick failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.scheduler_interval_seconds)

    async def tick(self) -> Counter[str]:
        """One pass over every step; returns how many jobs each step moved."""
        s, limit = self.settings, self.settings.scheduler_batch_size
        moved: Counter[str] = Counter()
        with self.tracer.start_as_current_span("jobq.scheduler.tick") as span:
            moved["scheduled"] = await self._fire_schedules()
            moved["promoted"] = await self._step("due", lambda: self.sweeps.promote_due(limit))
            moved["expired"] = await self._step("lease_expired", self._expire)
            moved["republished"] = await self._step(
                "unconfirmed",
                lambda: self.sweeps.take_unpublished(s.republish_after_seconds, limit),
            )
            for queue in await self.sweeps.queues_with_stale_tickets(s.lost_ticket_after_seconds):
                if await self._queue_looks_empty(queue):
                    moved["lost"] += await self._step(
                        "lost",
                        functools.partial(
                            self.sweeps.take_lost, queue, s.lost_ticket_after_seconds, limit
                        ),
                    )
            for key, n in moved.items():
                span.set_attribute(f"jobq.{key}", n)
        if any(moved.values()):
            log.info("tick", extra=dict(moved))
        self.stats.update(moved)
        return moved

    async def _step(self, why: str, take: Callable[[], Awaitable[list[Ticket]]]) -> int:
        """Take and publish batches until one is short; ``why`` goes on the publishes' spans,
        and tickets sent again (``unconfirmed``, ``lost``) are counted by it."""
        total = 0
        for _ in range(MAX_BATCHES):
            tickets = await take()
            await self.outbox.send(tickets, why)
            total += len(tickets)
            if why in REPUBLISHED:
                for queue, n in Counter(t.queue for t in tickets if not t.dead).items():
                    self.metrics.republished(queue, why, n)
            if len(tickets) < self.settings.scheduler_batch_size:
                break
        return total

    async def _fire_schedules(self) -> int:
        """Fire the ticks that came due, a batch of schedules a transaction; publish their
        jobs' tickets once it committed. Returns the jobs made."""
        limit, total = self.settings.scheduler_batch_size, 0
        for _ in range(MAX_BATCHES):
            fired = await self.schedules.fire_due(limit, self.settings.schedule_grace_seconds)
            self.metrics.each_job("submitted", fired.submitted)
            self.metrics.each_job("canceled", fired.canceled)
            if fired.outcomes or fired.skipped_ticks:
                log.info(
                    "schedules fired",
                    extra={**fired.outcomes, "missed_ticks_skipped": fired.skipped_ticks},
                )
            await self.outbox.send(fired.tickets, "scheduled")
            total += len(fired.submitted)
            if fired.taken < limit:
                break
        return total

    async def _expire(self) -> list[Ticket]:
        """Expired leases: counted by queue, and those that ended dead or canceled by type."""
        tickets, canceled = await self.sweeps.expire_leases(self.settings.scheduler_batch_size)
        for queue, n in Counter([t.queue for t in tickets] + [q for q, _ in canceled]).items():
            self.metrics.leases_expired(queue, n)
        self.metrics.each_job("dead", ((t.queue, t.type) for t in tickets if t.dead))
        self.metrics.each_job("canceled", canceled)
        return tickets

    async def _queue_looks_empty(self, queue: str) -> bool:
        try:
            ready, _ = await self.broker.queue_state(queue)
            return ready == 0
        except aiormq.exceptions.ChannelNotFoundEntity as exc:
            # The queue itself is gone (deleted): declare it again; its tickets are lost.
            # (Any other error, a silent broker's timeout say, ends the tick: the next asks.)
            log.warning(
                "queue missing; declaring it again", extra={"queue": queue, "error": repr(exc)}
            )
            await self.broker.ensure_queue(queue, redeclare=True)
            return True
