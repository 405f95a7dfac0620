"""Tickets out: publish those of committed jobs, then record which the broker confirmed.

The row is always committed first, so a ticket never names a job that does not exist; a
ticket that is not confirmed, or whose confirm is not recorded (the process died), is
published again by the scheduler (docs/design.md §3). The API, the worker and the scheduler
all send through an ``Outbox``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from shared.telemetry import in_background

if TYPE_CHECKING:
    from shared.db.tickets import TicketStore
    from shared.messaging import Broker, Ticket
    from shared.metrics import Metrics

log = logging.getLogger("jobq.outbox")


class Outbox:
    """``send`` publishes with confirms in flight together; confirms are recorded
    ``mark_delay`` seconds after the first of a batch arrives, in one UPDATE for all.

    By then most of the jobs have been claimed (the claim records the publish itself), so
    the UPDATE writes only the rows of a backlog older than the delay and never waits on a
    worker's lock: at 0.5 s, a 20,000-job backlog cost an extra UPDATE per job and halved
    throughput; at 5 s almost none is needed. A mark that is lost (the process died) costs
    one duplicate ticket, later. ``mark_delay=0``: recorded before ``send`` returns (the
    scheduler, whose next sweep must see them).
    """

    def __init__(
        self,
        tickets: TicketStore,
        broker: Broker,
        mark_delay: float,
        metrics: Metrics | None = None,
    ) -> None:
        self.tickets = tickets
        self.broker = broker
        self.mark_delay = mark_delay
        self.metrics = metrics
        self._confirmed: list[Ticket] = []
        self._marker: asyncio.Task[None] | None = None

    async def send(self, tickets: list[Ticket], why: str | None = None) -> list[Ticket]:
        """Publish; returns the tickets the broker confirmed. ``why`` names what made the
        publish, on its spans."""
        if not tickets:
            return []
        started = time.perf_counter()
        confirmed = await self.broker.publish_many(tickets, why)
        if confirmed and self.metrics is not None:
            self.metrics.confirmed(time.perf_counter() - started)
        self._confirmed.extend(confirmed)
        if self.mark_delay <= 0:
            await self._flush()
        elif self._confirmed and (self._marker is None or self._marker.done()):
            self._marker = in_background(self._mark_later())
        return confirmed

    async def _mark_later(self) -> None:
        while self._confirmed:
            await asyncio.sleep(self.mark_delay)
            await self._flush()

    async def _flush(self) -> None:
        tickets, self._confirmed = self._confirmed, []
        try:
            await self.tickets.mark_published(tickets)
        except asyncio.CancelledError:
            self._confirmed[:0] = tickets  # ``close`` records them
            raise
        except Exception as exc:
            log.warning(
                "could not record confirms", extra={"jobs": len(tickets), "error": repr(exc)}
            )

    async def close(self) -> None:
        if self._marker is not None:
            self._marker.cancel()
            await asyncio.gather(self._marker, return_exceptions=True)
        await self._flush()
