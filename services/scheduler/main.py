"""Composition root of the scheduler process."""

from __future__ import annotations

import logging

import uvloop

from services.scheduler.loop import Scheduler
from shared.config import Settings
from shared.db.sweeps import SweepStore
from shared.db.tickets import TicketStore
from shared.outbox import Outbox
from shared.runtime import service_resources, stop_on_signals
from shared.telemetry import start_tracing

log = logging.getLogger("jobq.scheduler")


async def serve(settings: Settings) -> None:
    provider = start_tracing("scheduler")
    tracer = provider.get_tracer("jobq.scheduler") if provider else None
    async with service_resources(settings, "scheduler", tracer, 4) as (engine, broker):
        # Confirms recorded at once: the next sweep must not take the same jobs again.
        outbox = Outbox(TicketStore(engine), broker, mark_delay=0)
        scheduler = Scheduler(settings, SweepStore(engine), outbox, broker, tracer)
        await scheduler.run(stop_on_signals())
        log.info("scheduler stopped", extra={"stats": dict(scheduler.stats)})
    if provider:
        provider.shutdown()


def main(settings: Settings) -> None:
    uvloop.run(serve(settings))
