"""The worker: consume tickets, claim jobs in batches, run handlers, record outcomes.

Deliveries wait in a priority-ordered buffer (``deliveries``, bounded by the prefetch) until a
slot is free; free slots are filled by one claim UPDATE for all the deliveries at hand, and
each delivery is acked once that claim commits (docs/design.md §3.3). From then on the lease
in PostgreSQL, renewed by one heartbeat UPDATE for all running jobs, is what recovers the job
if this process dies. Each attempt is run by ``execution`` and its outcome written by
``outcomes``; this module ties them together and owns the running tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from jobq import JobContext
from opentelemetry import trace

from services.worker.attempt_spans import attempt_span, failed
from services.worker.deliveries import Delivery, DeliveryBuffer, settle
from services.worker.execution import Failed, attempt
from services.worker.outcomes import Outcomes
from services.worker.progress import ProgressWriter
from services.worker.registry import Registry
from shared.db.errors import is_transient
from shared.errors import DecodeError
from shared.liveness import Liveness
from shared.logging import current_job_id, current_trace_id
from shared.messaging import Ticket, decode_ticket
from shared.metrics import Metrics
from shared.telemetry import trace_id_of, traceparent_of

if TYPE_CHECKING:
    from aio_pika.abc import AbstractIncomingMessage, AbstractQueue
    from opentelemetry.trace import Span, SpanContext, Tracer

    from shared.config import Settings
    from shared.db.leases import Claimed, LeaseStore
    from shared.messaging import Broker
    from shared.outbox import Outbox

log = logging.getLogger("jobq.worker")

StopReason = Literal["canceled", "lease_lost", "shutdown"]
#: The worker's loops, as its liveness knows them: taking deliveries, renewing leases.
DELIVERIES, HEARTBEAT = "deliveries", "heartbeat"
LOOPS = (DELIVERIES, HEARTBEAT)


@dataclass
class Running:
    job: Claimed
    task: asyncio.Task[None]
    stop_reason: StopReason | None = None
    #: The handler returned or raised; its outcome is being written.
    finishing: bool = False


class Worker:
    """One worker process's runtime; ``run(stop)`` returns after a graceful drain."""

    def __init__(
        self,
        settings: Settings,
        leases: LeaseStore,
        outbox: Outbox,
        broker: Broker,
        registry: Registry,
        tracer: Tracer | None,
        metrics: Metrics | None = None,
        liveness: Liveness | None = None,
    ) -> None:
        self.settings = settings
        self.leases = leases
        self.outbox = outbox
        self.broker = broker
        self.registry = registry
        self.tracer = tracer
        self.concurrency = settings.worker_concurrency
        self.stats: Counter[str] = Counter()
        self.metrics = metrics or Metrics("worker")
        self.liveness = liveness or Liveness(settings.liveness_deadline_seconds, LOOPS)
        self._buffer = DeliveryBuffer()
        self.outcomes = Outcomes(settings, leases, outbox, self.stats, self.metrics)
        self.progress = ProgressWriter(leases)
        self._wake = asyncio.Event()
        #: Attempts running here, by lease id: an older attempt of the same job may still be
        #: writing its (refused) outcome when its re-queued ticket is claimed here again.
        self._running: dict[uuid.UUID, Running] = {}
        self._consumers: list[tuple[AbstractQueue, str]] = []
        self._db_ok = True

    def in_flight(self) -> int:
        """Jobs this worker holds now."""
        return len(self._running)

    def not_ready(self) -> str | None:
        """Why this worker takes no work now, if it does not (``/health/ready``)."""
        if not self._consumers:
            return "not consuming yet"
        return None if self._db_ok else "PostgreSQL: claims failing"

    # -- lifecycle ------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set, then drain (docs/design.md §3.6)."""
        # Sync handlers run in threads: one per slot, so none waits for a thread while its
        # timeout runs.
        asyncio.get_running_loop().set_default_executor(
            ThreadPoolExecutor(self.concurrency, thread_name_prefix="jobq-handler")
        )
        channel = await self.broker.consumer_channel(prefetch=self.concurrency)
        for queue in self.settings.consumed_queues:
            name = await self.broker.ensure_queue(queue)
            # Declared (not just looked up) on this channel: the robust channel re-declares
            # the queues it declared after a reconnect and only then restores their consumers.
            q = await channel.declare_queue(
                name, durable=True, arguments=self.broker.topology.queue_arguments()
            )
            tag = await q.consume(self._on_message)
            self._consumers.append((q, tag))
        log.info(
            "worker consuming",
            extra={
                "queues": self.settings.consumed_queues,
                "concurrency": self.concurrency,
                "handlers": self.registry.names(),
            },
        )
        loops = [
            asyncio.create_task(self._dispatch_loop()),
            asyncio.create_task(self._heartbeat_loop()),
            asyncio.create_task(self._hand_back_loop()),
        ]
        stopped = asyncio.create_task(stop.wait())
        try:
            # A loop that dies is a bug: stop consuming and let the supervisor restart us.
            await asyncio.wait([stopped, *loops], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            # Stop claiming first, so no claim commits after the drain took its census.
            for task in loops:
                task.cancel()
            results = await asyncio.gather(*loops, return_exceptions=True)
            await self._drain()
            await channel.close()
        for result in results:
            if isinstance(result, Exception):
                raise result

    async def _drain(self) -> None:
        """Stop taking deliveries, let running jobs finish within the grace period, then
        release the rest to be re-run elsewhere."""
        for q, tag in self._consumers:
            try:  # a silent broker would hold this until its heartbeat gives up: minutes
                await q.cancel(tag, timeout=self.settings.publish_timeout_seconds)
            except Exception as exc:  # broker gone: its deliveries return by themselves
                log.warning("could not cancel consumer", extra={"error": repr(exc)})
        await self._buffer.settle(self._buffer.take_all(), "nack")
        running = [r.task for r in self._running.values()]
        if running:
            log.info("draining", extra={"running": len(running)})
            await asyncio.wait(running, timeout=self.settings.shutdown_grace_seconds)
        for r in list(self._running.values()):
            if not r.finishing:
                r.stop_reason = "shutdown"
                r.task.cancel()
        if self._running:
            await asyncio.gather(*(r.task for r in self._running.values()), return_exceptions=True)
        await self.outcomes.close()
        await self.progress.close()

    # -- deliveries -----------------------------------------------------------------------

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        try:
            ticket = decode_ticket(message.body)
        except DecodeError as exc:
            self.stats["rejected"] += 1
            log.error("undecodable message dead-lettered", extra={"error": str(exc)})
            await settle(message, "reject")
            return
        # Under aio-pika's instrumentation this runs in the delivery's span: the attempt links it.
        delivered = trace.get_current_span().get_span_context() if self.tracer else None
        self._buffer.add(message, ticket, message.priority or 0, id(message.channel), delivered)
        self._wake.set()

    async def _dispatch_loop(self) -> None:
        backoff = 0.1
        while True:
            with contextlib.suppress(TimeoutError):  # idle, it still comes round (liveness)
                await asyncio.wait_for(
                    self._wake.wait(), self.settings.liveness_deadline_seconds / 4
                )
            self.liveness.beat(DELIVERIES)
            self._wake.clear()
            while self._buffer and (free := self.concurrency - len(self._running)) > 0:
                self.liveness.beat(DELIVERIES)
                batch = self._buffer.take(free)
                try:
                    await self._claim(batch)
                    self._db_ok, backoff = True, 0.1
                except Exception as exc:
                    if not is_transient(exc):
                        raise
                    # PostgreSQL is down: keep the deliveries (the prefetch stops the broker
                    # sending more) instead of bouncing them and burning their delivery count.
                    self._db_ok = False
                    for d in batch:
                        d.retry_with_fresh_lease()
                    self._buffer.put_back(batch)
                    log.warning("claim failed; pausing", extra={"error": repr(exc)})
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)

    async def _claim(self, batch: list[Delivery]) -> None:
        claimed, others = await self.leases.claim(
            [d.ticket.job_id for d in batch],
            self.settings.lease_seconds,
            [d.lease for d in batch],
            [lease for d in batch for lease in d.tried],
        )
        by_id = {c.id: c for c in claimed}
        acks, rejects = [], []
        for d in batch:
            job = by_id.pop(d.ticket.job_id, None)
            if job is not None:
                self.stats["claimed"] += 1
                if job.waited_seconds is not None:  # a fresh start, not a retried claim's
                    self.metrics.jobs("started", job.queue, job.type)
                    self.metrics.waited(job.queue, job.type, job.waited_seconds)
                task = asyncio.create_task(self._run_job(job, d.delivered))
                self._running[job.lease_id] = Running(job, task)
                task.add_done_callback(functools.partial(self._slot_freed, job.lease_id))
                acks.append(d)
            elif d.ticket.job_id in others:
                self.stats["duplicates"] += 1
                acks.append(d)
            else:
                self.stats["rejected"] += 1
                log.error(
                    "ticket names no job; dead-lettered", extra={"job_id": str(d.ticket.job_id)}
                )
                rejects.append(d)
        await self._buffer.settle(acks, "ack")
        await self._buffer.settle(rejects, "reject")

    def _slot_freed(self, lease_id: uuid.UUID, _task: object = None) -> None:
        self._running.pop(lease_id, None)
        self._wake.set()

    # -- running a job --------------------------------------------------------------------

    async def _run_job(self, job: Claimed, delivered: SpanContext | None) -> None:
        """Run one attempt: with a tracer, as a span of the job's trace (``attempt_span``)."""
        token = current_job_id.set(str(job.id))
        try:
            if self.tracer is None:  # nothing exports spans: make none (docs/design.md §7)
                trace_token = current_trace_id.set(trace_id_of(job.traceparent))
                try:
                    await self._attempt(job, None)
                finally:
                    current_trace_id.reset(trace_token)
                return
            with attempt_span(self.tracer, job, delivered) as span:
                await self._attempt(job, span)
        finally:
            current_job_id.reset(token)

    async def _attempt(self, job: Claimed, span: Span | None) -> None:
        ctx = JobContext(
            job.id, job.tenant, job.type, job.attempts, job.max_attempts, job.lease_id,
            reporter=self.progress.reporter(job.id, job.lease_id),
        )  # fmt: skip
        started = time.perf_counter()
        try:
            outcome = await attempt(
                lambda: self.registry.get(job.type)(job.payload, ctx), job.timeout_seconds
            )
        except asyncio.CancelledError:
            await self._stopped(job)
            return
        self.metrics.ran(job.queue, job.type, time.perf_counter() - started)
        if span is not None and isinstance(outcome, Failed):
            failed(span, outcome.error)
        # The handler is done and its outcome is being written: neither a heartbeat (which
        # may see the row leave 'running' first) nor a shutdown may cancel that.
        self._running[job.lease_id].finishing = True
        await self.outcomes.record(job, outcome, traceparent_of(span) if span else None)

    async def _stopped(self, job: Claimed) -> None:
        """The job's task was cancelled by us: honour the reason."""
        running = self._running.get(job.lease_id)
        reason = running.stop_reason if running else "shutdown"
        if reason == "canceled":
            await self.outcomes.cancel(job)
        elif reason == "shutdown":
            await self.outcomes.release(job)

    # -- leases ---------------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        interval = self.settings.lease_seconds / 3
        while True:
            await asyncio.sleep(interval)
            self.liveness.beat(HEARTBEAT)  # also when PostgreSQL is down: the loop is not stuck
            try:
                await self._heartbeat()
            except Exception as exc:
                if not is_transient(exc):
                    raise
                log.warning("heartbeat failed", extra={"error": repr(exc)})

    async def _hand_back_loop(self) -> None:
        """Apart from the heartbeat, so a slow broker never delays a lease renewal."""
        interval = min(self.settings.handback_after_seconds / 4, 30.0)
        while True:
            await asyncio.sleep(interval)
            await self._hand_back_stale_deliveries()

    async def _heartbeat(self) -> None:
        # Finishing jobs too: an outcome retried through a database outage needs its lease.
        running = [r for r in self._running.values() if r.stop_reason is None]
        held = await self.leases.heartbeat(
            [(r.job.id, r.job.lease_id) for r in running], self.settings.lease_seconds
        )
        for r in running:
            if r.finishing:
                continue  # its outcome write decides (and may just have left 'running')
            if r.job.id not in held:
                # Another worker may run this job now; this one's writes would be refused.
                r.stop_reason = "lease_lost"
                r.task.cancel()
                self.stats["lease_lost"] += 1
            elif held[r.job.id]:
                r.stop_reason = "canceled"
                r.task.cancel()

    async def _hand_back_stale_deliveries(self) -> None:
        """Deliveries that waited in the buffer too long (every slot busy with long jobs) go
        back to the queue as fresh tickets, so none nears RabbitMQ's consumer_timeout."""
        if not self._db_ok:
            return
        stale = self._buffer.take_older_than(
            time.monotonic() - self.settings.handback_after_seconds
        )
        for d in stale:
            t, headers = d.ticket, d.message.headers or {}
            ticket = Ticket(
                t.job_id,
                t.type,
                t.attempt,
                queue=d.message.routing_key or "default",
                priority=d.message.priority or 0,
                traceparent=headers.get("traceparent"),
                tenant=headers.get("x-jobq-tenant"),
                tracestate=headers.get("tracestate"),
            )
            try:
                await self.broker.publish(ticket, "handed_back")
            except Exception as exc:
                log.warning("hand-back failed; delivery kept", extra={"error": repr(exc)})
                self._buffer.put_back([d])
                continue
            await self._buffer.settle([d], "ack")
            self.stats["handed_back"] += 1
