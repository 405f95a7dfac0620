"""Composition root of the scheduler process."""

from __future__ import annotations

import asyncio
import logging

import uvloop

from services.scheduler.callbacks import CALLBACKS, Callbacks
from services.scheduler.dispatcher import DISPATCH, Dispatcher
from services.scheduler.figures import QueueGauges
from services.scheduler.loop import TICK, Scheduler
from services.scheduler.retention import RETENTION, Retention
from shared.callbacks import CallbackPolicy
from shared.config import Settings
from shared.db.callbacks import CallbackStore
from shared.db.dispatch import DispatchStore
from shared.db.queues import QueueStore
from shared.db.sweeps import SweepStore
from shared.db.tickets import TicketStore
from shared.liveness import Liveness
from shared.metrics import Metrics
from shared.ops_server import OpsServer, serving
from shared.outbox import Outbox
from shared.runtime import dependencies_ready, service_resources, stop_on_signals
from shared.telemetry import start_tracing

log = logging.getLogger("jobq.scheduler")


async def serve(settings: Settings) -> None:
    provider = start_tracing("scheduler")
    tracer = provider.get_tracer("jobq.scheduler") if provider else None
    metrics = Metrics("scheduler", counting=settings.metrics)
    liveness = Liveness(settings.liveness_deadline_seconds, [TICK, RETENTION, DISPATCH, CALLBACKS])
    metrics.watch(liveness)
    async with service_resources(settings, "scheduler", tracer, 4) as (engine, broker):
        sweeps = SweepStore(engine)
        gauges = QueueGauges(sweeps, broker, settings.db_timeout_seconds)
        metrics.registry.register(gauges)
        ops = OpsServer(
            metrics, liveness,
            ready=lambda: dependencies_ready(engine, broker, settings.db_timeout_seconds),
            before_scrape=gauges.refresh,
        )  # fmt: skip
        # Confirms recorded at once: the next sweep must not take the same jobs again.
        outbox = Outbox(TicketStore(engine), broker, mark_delay=0, metrics=metrics)
        scheduler = Scheduler(settings, sweeps, outbox, broker, tracer, metrics, liveness)
        retention = Retention(settings, sweeps, QueueStore(engine), metrics, liveness)
        dispatch = DispatchStore(engine, settings.fair_depth, settings.scheduler_batch_size)
        dispatcher = Dispatcher(settings, dispatch, outbox, liveness)
        callbacks = Callbacks(
            CallbackPolicy.from_settings(settings), CallbackStore(engine), metrics, liveness,
            settings.scheduler_interval_seconds,
        )  # fmt: skip
        port = settings.scheduler_metrics_port
        stop = stop_on_signals()
        async with serving(ops, settings.metrics_host, port, "JOBQ_SCHEDULER_METRICS_PORT"):
            await asyncio.gather(
                scheduler.run(stop), retention.run(stop), dispatcher.run(stop), callbacks.run(stop)
            )
        stats = {**scheduler.stats, "released": dispatcher.released}
        log.info("scheduler stopped", extra={"stats": stats})
    if provider:
        provider.shutdown()


def main(settings: Settings) -> None:
    uvloop.run(serve(settings))
