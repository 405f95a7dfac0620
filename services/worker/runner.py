"""The worker: consume tickets, claim jobs in batches, run handlers, record outcomes.

Deliveries wait in a priority-ordered buffer (bounded by the prefetch) until a slot is free;
free slots are filled by one claim UPDATE for all the deliveries at hand, and each delivery is
acked once that claim commits (docs/design.md §3.3). From then on the lease in PostgreSQL, renewed by one
heartbeat UPDATE for all running jobs, is what recovers the job if this process dies.
Successes are group-committed; failures are recorded one by one.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import itertools
import logging
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import msgspec
from opentelemetry.trace import SpanKind, Status, StatusCode

from services.worker.acks import Outstanding
from services.worker.registry import JobContext, Registry
from shared.batching import Batcher
from shared.db.errors import is_transient
from shared.domain import decide_failure
from shared.errors import DecodeError, PermanentFailure
from shared.logging import current_job_id
from shared.messaging import Ticket, decode_ticket
from shared.telemetry import context_from

if TYPE_CHECKING:
    from aio_pika.abc import AbstractIncomingMessage, AbstractQueue
    from opentelemetry.trace import Span, Tracer

    from shared.config import Settings
    from shared.db.leases import Claimed, LeaseStore
    from shared.messaging import Broker, TicketBody
    from shared.outbox import Outbox

log = logging.getLogger("jobq.worker")

StopReason = Literal["canceled", "lease_lost", "shutdown"]


@dataclass(order=True)
class Delivery:
    sort_key: tuple[int, int]
    message: AbstractIncomingMessage = field(compare=False)
    ticket: TicketBody = field(compare=False)
    received: float = field(compare=False)
    #: The underlying AMQP channel it came on (delivery tags are per channel).
    channel: int = field(compare=False)
    #: The lease id its claim asks for; a retry asks for a fresh one and names the earlier
    #: ones (``tried``), whose claim may have committed with its reply lost.
    lease: uuid.UUID = field(compare=False, default_factory=uuid.uuid4)
    tried: list[uuid.UUID] = field(compare=False, default_factory=list)

    @property
    def tag(self) -> int:
        return int(self.message.delivery_tag or 0)


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
    ) -> None:
        self.settings = settings
        self.leases = leases
        self.outbox = outbox
        self.broker = broker
        self.registry = registry
        self.tracer = tracer
        self.concurrency = settings.worker_concurrency
        self.stats: Counter[str] = Counter()
        self._buffer: list[Delivery] = []
        self._outstanding = Outstanding()
        self._seq = itertools.count()
        self._wake = asyncio.Event()
        #: Attempts running here, by lease id: an older attempt of the same job may still be
        #: writing its (refused) outcome when its re-queued ticket is claimed here again.
        self._running: dict[uuid.UUID, Running] = {}
        self._consumers: list[tuple[AbstractQueue, str]] = []
        self._completions: Batcher[tuple[uuid.UUID, uuid.UUID, str], bool] = Batcher(
            leases.complete
        )
        self._db_ok = True

    # -- lifecycle ------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set, then drain (docs/design.md §3.6)."""
        # Sync handlers run in threads: one per slot, so none waits for a thread while its
        # timeout runs.
        asyncio.get_running_loop().set_default_executor(
            ThreadPoolExecutor(self.concurrency, thread_name_prefix="jobq-handler")
        )
        channel = await self.broker.connection.channel()  # type: ignore[union-attr]
        await channel.set_qos(prefetch_count=self.concurrency)
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
            try:
                await q.cancel(tag)
            except Exception as exc:  # broker gone: its deliveries return by themselves
                log.warning("could not cancel consumer", extra={"error": repr(exc)})
        buffered, self._buffer = self._buffer, []
        await self._settle_buffered(buffered, "nack")
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
        await self._completions.drain()

    # -- deliveries -----------------------------------------------------------------------

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        try:
            ticket = decode_ticket(message.body)
        except DecodeError as exc:
            self.stats["rejected"] += 1
            log.error("undecodable message dead-lettered", extra={"error": str(exc)})
            await self._settle(message, "reject")
            return
        priority = message.priority or 0
        d = Delivery(
            (-priority, next(self._seq)), message, ticket, time.monotonic(), id(message.channel)
        )
        self._outstanding.add(d.channel, d.tag)
        heapq.heappush(self._buffer, d)
        self._wake.set()

    async def _settle(
        self,
        message: AbstractIncomingMessage,
        how: Literal["ack", "nack", "reject"],
        multiple: bool = False,
    ) -> None:
        """Ack, requeue or dead-letter a delivery; a closed channel means the broker already
        took it back, which is fine: the claim in PostgreSQL decides."""
        try:
            if how == "ack":
                await message.ack(multiple=multiple)
            elif how == "nack":
                await message.nack(requeue=True)
            else:
                await message.reject(requeue=False)
        except Exception as exc:
            log.warning("delivery not settled", extra={"how": how, "error": repr(exc)})

    async def _settle_buffered(
        self, deliveries: list[Delivery], how: Literal["ack", "nack", "reject"]
    ) -> None:
        """Settle deliveries taken from the buffer: acks of a whole channel prefix in one
        ``ack(multiple=True)`` (``services.worker.acks``), the rest one by one."""
        by_channel: dict[int, list[Delivery]] = {}
        for d in deliveries:
            by_channel.setdefault(d.channel, []).append(d)
        for channel, group in by_channel.items():
            tags = {d.tag for d in group}
            if how == "ack" and len(group) > 1 and self._outstanding.covers(channel, tags):
                await self._settle(max(group, key=lambda d: d.tag).message, "ack", multiple=True)
            else:
                for d in group:
                    await self._settle(d.message, how)
            self._outstanding.settle(channel, tags)

    async def _dispatch_loop(self) -> None:
        backoff = 0.1
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._buffer and (free := self.concurrency - len(self._running)) > 0:
                batch = [heapq.heappop(self._buffer) for _ in range(min(free, len(self._buffer)))]
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
                        d.tried.append(d.lease)
                        d.lease = uuid.uuid4()
                        heapq.heappush(self._buffer, d)
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
                task = asyncio.create_task(self._run_job(job))
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
        await self._settle_buffered(acks, "ack")
        await self._settle_buffered(rejects, "reject")

    def _slot_freed(self, lease_id: uuid.UUID, _task: object = None) -> None:
        self._running.pop(lease_id, None)
        self._wake.set()

    # -- running a job --------------------------------------------------------------------

    async def _run_job(self, job: Claimed) -> None:
        token = current_job_id.set(str(job.id))
        try:
            if self.tracer is None:  # nothing exports spans: make none (docs/design.md §7)
                await self._attempt(job, None)
                return
            with self.tracer.start_as_current_span(
                f"jobq.run {job.type}",
                context=context_from(job.traceparent),
                kind=SpanKind.CONSUMER,
                attributes={
                    "jobq.job_id": str(job.id),
                    "jobq.attempt": job.attempts,
                    "jobq.queue": job.queue,
                },
            ) as span:
                await self._attempt(job, span)
        finally:
            current_job_id.reset(token)

    async def _attempt(self, job: Claimed, span: Span | None) -> None:
        ctx = JobContext(job.id, job.tenant, job.type, job.attempts, job.max_attempts, job.lease_id)
        outcome: Callable[[], Awaitable[None]]
        try:
            async with asyncio.timeout(job.timeout_seconds):
                result = await self.registry.get(job.type)(job.payload, ctx)
        except asyncio.CancelledError:
            await self._stopped(job)
            return
        except Exception as exc:
            if span is not None:
                span.set_status(Status(StatusCode.ERROR, str(exc)[:200]))
            if isinstance(exc, TimeoutError):
                exc = TimeoutError(f"attempt exceeded timeout_seconds={job.timeout_seconds}")
            outcome = functools.partial(self._fail, job, exc)
        else:
            outcome = functools.partial(self._succeed, job, result)
        # The handler is done and its outcome is being written: neither a heartbeat (which
        # may see the row leave 'running' first) nor a shutdown may cancel that.
        self._running[job.lease_id].finishing = True
        await outcome()

    async def _succeed(self, job: Claimed, result: Any) -> None:
        try:
            encoded = msgspec.json.encode(result).decode()
        except (TypeError, msgspec.EncodeError) as exc:
            await self._fail(job, PermanentFailure(f"result is not JSON: {exc}"))
            return
        if "\\u0000" in encoded:  # PostgreSQL's jsonb refuses NUL
            await self._fail(job, PermanentFailure("result holds a NUL character (\\u0000)"))
            return
        written = await self._persist(
            lambda: self._completions.submit((job.id, job.lease_id, encoded))
        )
        self.stats["succeeded" if written else "stale"] += 1
        if not written:
            log.warning("completion refused: lease no longer held")

    async def _fail(self, job: Claimed, exc: BaseException) -> None:
        permanent = isinstance(exc, PermanentFailure)
        decision = decide_failure(
            job.attempts,
            job.max_attempts,
            permanent=permanent,
            base=job.retry_backoff_seconds or self.settings.retry_backoff_seconds,
            cap=job.retry_backoff_max_seconds or self.settings.retry_backoff_max_seconds,
        )
        error = {"type": type(exc).__name__, "message": str(exc)[:2000].replace("\x00", "")}
        dead = await self._persist(
            lambda: self.leases.fail(job, decision.status, decision.delay_seconds, error)
        )
        self.stats[f"failed_{decision.status}"] += 1
        log.info("attempt failed", extra={"error": error, "next": str(decision.status)})
        if dead is not None:
            await self._publish(dead)

    async def _stopped(self, job: Claimed) -> None:
        """The job's task was cancelled by us: honour the reason."""
        running = self._running.get(job.lease_id)
        reason = running.stop_reason if running else "shutdown"
        if reason == "canceled":
            await self._persist(lambda: self.leases.cancel_running(job))
            self.stats["canceled"] += 1
        elif reason == "shutdown":
            ticket = await self._persist(lambda: self.leases.release(job))
            self.stats["released"] += 1
            if ticket is not None:
                await self._publish(ticket)

    async def _publish(self, ticket: Ticket) -> None:
        """Publish after the commit; unconfirmed tickets are left to the scheduler."""
        await self.outbox.send([ticket])

    async def _persist(self, write: Any) -> Any:
        """Run a database write, retrying while PostgreSQL is unreachable. The write's own
        compare-and-set makes a late retry harmless."""
        delay = 0.1
        while True:
            try:
                return await write()
            except Exception as exc:
                if not is_transient(exc):
                    raise
                log.warning("database unavailable; retrying", extra={"error": repr(exc)})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    # -- leases ---------------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        interval = self.settings.lease_seconds / 3
        while True:
            await asyncio.sleep(interval)
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
        limit = time.monotonic() - self.settings.handback_after_seconds
        stale = [d for d in self._buffer if d.received < limit]
        if not stale:
            return
        self._buffer = [d for d in self._buffer if d.received >= limit]
        heapq.heapify(self._buffer)
        for d in stale:
            t = d.ticket
            ticket = Ticket(
                t.job_id,
                t.type,
                t.attempt,
                queue=d.message.routing_key or "default",
                priority=d.message.priority or 0,
                traceparent=(d.message.headers or {}).get("traceparent"),  # type: ignore[arg-type]
            )
            try:
                await self.broker.publish(ticket)
            except Exception as exc:
                log.warning("hand-back failed; delivery kept", extra={"error": repr(exc)})
                heapq.heappush(self._buffer, d)
                continue
            await self._settle_buffered([d], "ack")
            self.stats["handed_back"] += 1
