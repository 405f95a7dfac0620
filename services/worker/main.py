"""Composition root of the worker process."""

from __future__ import annotations

import asyncio
import logging

import uvloop
from jobq.handlers import Handler

from services.worker.registry import BUILTIN, Registry
from services.worker.runner import LOOPS, Worker
from services.worker.webhook import WebhookPolicy, webhook_handler
from shared.config import Settings
from shared.db.leases import LeaseStore
from shared.db.queues import QueueStore
from shared.db.tickets import TicketStore
from shared.db.types import TypeStore
from shared.errors import ConfigError
from shared.liveness import Liveness
from shared.metrics import Metrics
from shared.ops_server import OpsServer, serving
from shared.outbox import Outbox
from shared.runtime import dependencies_ready, service_resources, stop_on_signals
from shared.telemetry import start_tracing

log = logging.getLogger("jobq.worker")


async def serve(settings: Settings) -> None:
    registry = Registry.from_modules([BUILTIN, *settings.handler_modules])
    # Built here, not at import like the other built-ins: its policy comes from the settings.
    webhook = webhook_handler(WebhookPolicy.from_settings(settings))
    registry.add(Handler.of(webhook, "webhook"))
    # Spans cost ~25 µs a job even unsampled: made only when something exports them.
    provider = start_tracing("worker", consumer=True)
    tracer = provider.get_tracer("jobq.worker") if provider else None
    pool = min(settings.worker_concurrency + 4, 40)
    metrics = Metrics("worker", counting=settings.metrics)
    liveness = Liveness(settings.liveness_deadline_seconds, LOOPS)
    metrics.watch(liveness)
    async with service_resources(settings, "worker", tracer, pool) as (engine, broker):
        missing = await QueueStore(engine).missing(settings.consumed_queues)
        if missing:
            raise ConfigError(
                f"queue(s) {', '.join(missing)} not declared: declare them first"
                " (POST /v1/admin/queues, or JOBQ_QUEUES on every service)"
            )
        outbox = Outbox(TicketStore(engine), broker, settings.mark_delay_seconds, metrics)
        worker = Worker(
            settings, LeaseStore(engine), outbox, broker, registry, tracer, metrics, liveness
        )
        metrics.gauge("jobq_worker_in_flight_jobs", "jobs this worker holds now", worker.in_flight)

        async def ready() -> str | None:
            down = await dependencies_ready(engine, broker, settings.db_timeout_seconds)
            return down or worker.not_ready()

        ops = OpsServer(metrics, liveness, ready)
        port = settings.worker_metrics_port
        registering = asyncio.create_task(keep_registered(TypeStore(engine), registry))
        try:
            async with serving(ops, settings.metrics_host, port, "JOBQ_WORKER_METRICS_PORT"):
                await worker.run(stop_on_signals())
        finally:
            registering.cancel()
            await outbox.close()
        log.info("worker stopped", extra={"stats": dict(worker.stats)})
    if provider:
        provider.shutdown()


#: How often a worker says again which job types it serves.
REGISTER_EVERY_SECONDS = 60.0


async def keep_registered(types: TypeStore, registry: Registry) -> None:
    """Register the types this worker serves now, and again every minute (``last_seen``)."""
    while True:
        try:
            await types.register(registry.described())
        except Exception as exc:  # the next round registers again
            log.warning("job types not registered", extra={"error": repr(exc)})
        await asyncio.sleep(REGISTER_EVERY_SECONDS)


def main(settings: Settings) -> None:
    uvloop.run(serve(settings))
