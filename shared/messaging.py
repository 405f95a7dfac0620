"""RabbitMQ: topology (docs/design.md §4), the ticket codec, and publishing with confirms.

A message is a ticket saying "job X may run now"; the job itself lives in PostgreSQL. Losing
or duplicating a ticket costs latency, never a job: the worker's claim decides, and the
scheduler publishes again what was not confirmed.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import aio_pika
import aiormq
import msgspec
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractRobustConnection,
    ExchangeType,
)
from aiormq.abc import ChannelFrame

from shared import frames
from shared.errors import DecodeError, DependencyUnavailable, QueueInUse, TopologyMismatch
from shared.publish_spans import PublishSpans

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

    from shared.config import Settings

log = logging.getLogger("jobq.broker")


#: The header naming a ticket's tenant (the console shows it; workers' buffers take turns by it).
TENANT_HEADER = "x-jobq-tenant"


class TicketBody(msgspec.Struct, forbid_unknown_fields=False):
    """The message body: ids only; the payload stays in PostgreSQL."""

    job_id: uuid.UUID
    type: str
    attempt: int


@dataclass(frozen=True, slots=True)
class Ticket:
    """Everything needed to publish one job's message.

    ``dead`` tickets go to the dead-letter exchange with ``reason`` and the last error's class
    (``error_type``); the rest to the job's queue. ``attempt`` is the job's attempts so far.
    """

    job_id: uuid.UUID
    type: str
    attempt: int
    queue: str
    priority: int
    traceparent: str | None = None
    dead: bool = False
    reason: str | None = None
    tenant: str | None = None
    tracestate: str | None = None
    error_type: str | None = None


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(TicketBody)


def encode_ticket(ticket: Ticket) -> bytes:
    return _encoder.encode(TicketBody(ticket.job_id, ticket.type, ticket.attempt))


def headers(ticket: Ticket, message_id: str) -> dict[str, str | int]:
    """A ticket's headers: what an operator reads of a message in RabbitMQ's console (README,
    "The RabbitMQ console"), and the W3C trace context.

    ``x-jobq-attempt`` is the attempt the ticket starts (1 for a new job); on a dead letter,
    the last attempt made, with ``x-jobq-reason`` (the last error) and ``x-jobq-error-type``
    (its class).
    """
    h: dict[str, str | int] = {
        "x-jobq-job-id": message_id,
        "x-jobq-type": ticket.type,
        "x-jobq-attempt": ticket.attempt if ticket.dead else ticket.attempt + 1,
    }
    if ticket.tenant:
        h[TENANT_HEADER] = ticket.tenant
    if ticket.traceparent:
        h["traceparent"] = ticket.traceparent
    if ticket.tracestate:
        h["tracestate"] = ticket.tracestate
    if ticket.dead:
        h["x-jobq-reason"] = (ticket.reason or "dead")[:1000]
        h["x-jobq-error-type"] = ticket.error_type or "unknown"
        h["x-jobq-queue"] = ticket.queue
    return h


def _forget(channel: aiormq.Channel, message_id: str) -> Callable[[object], None]:
    """Once settled, stop matching returns of ``message_id`` to this publish."""
    tag = channel.delivery_tag

    def forget(_: object) -> None:
        if channel.message_id_delivery_tag.get(message_id) == tag:
            del channel.message_id_delivery_tag[message_id]

    return forget


def decode_ticket(body: bytes) -> TicketBody:
    """Decode a message body; anything that is not a ticket raises ``DecodeError``."""
    try:
        return _decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
        raise DecodeError(f"not a jobq ticket: {exc}") from None


@dataclass(frozen=True, slots=True)
class Topology:
    """Exchange and queue names and arguments, derived from the settings."""

    prefix: str
    queue_type: str
    delivery_limit: int
    dead_letter_max_length: int = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> Topology:
        return cls(
            settings.broker_prefix, settings.queue_type, settings.delivery_limit,
            settings.dead_letter_max_length,
        )  # fmt: skip

    @property
    def jobs_exchange(self) -> str:
        return f"{self.prefix}.jobs"

    @property
    def dlx(self) -> str:
        return f"{self.prefix}.dlx"

    @property
    def dead_queue(self) -> str:
        return f"{self.prefix}.dead"

    def queue_name(self, queue: str) -> str:
        return f"{self.prefix}.q.{queue}"

    def queue_arguments(self) -> dict[str, Any]:
        """Quorum queues get a delivery limit and at-least-once dead-lettering; classic queues
        get ``x-max-priority`` (RabbitMQ 3.10 quorum queues have no priorities)."""
        args: dict[str, Any] = {"x-dead-letter-exchange": self.dlx}
        if self.queue_type == "quorum":
            args |= {
                "x-queue-type": "quorum",
                "x-delivery-limit": self.delivery_limit,
                "x-dead-letter-strategy": "at-least-once",
                "x-overflow": "reject-publish",
            }
        else:
            args |= {"x-queue-type": "classic", "x-max-priority": 9}
        return args

    def dead_queue_arguments(self) -> dict[str, Any]:
        """Past ``dead_letter_max_length`` the oldest dead letters go (``drop-head``): with
        ``reject-publish`` a full queue would refuse jobq's own dead-letter tickets, which the
        scheduler would publish again and again; PostgreSQL keeps every dead job anyway."""
        args: dict[str, Any] = {"x-queue-type": self.queue_type}
        if self.dead_letter_max_length:
            args |= {"x-max-length": self.dead_letter_max_length, "x-overflow": "drop-head"}
        return args


@asynccontextmanager
async def _refusing_mismatch(name: str, redeclare: str) -> AsyncIterator[None]:
    """A declare RabbitMQ refused because ``name`` exists with other arguments (another
    queue type, delivery limit or bound) becomes one line saying what to do: never a silent
    redeclare (docs/design.md §4)."""
    try:
        yield
    except aiormq.exceptions.ChannelPreconditionFailed as exc:
        found = re.search(r"inequivalent arg '[^']+'.*?current is '[^']*'", str(exc))
        why = found.group(0) if found else str(exc)
        raise TopologyMismatch(
            f"RabbitMQ's {name} exists with other arguments than these settings ask for ({why});"
            " RabbitMQ cannot change them in place: set the setting back, or recreate it with"
            f" `jobq broker redeclare {redeclare}` (see the README, Queues)"
        ) from None


class Broker:
    """One robust connection; a confirming publish channel; queues declared on first use."""

    def __init__(
        self, settings: Settings, connection_name: str, tracer: Tracer | None = None
    ) -> None:
        self.settings = settings
        #: Publishes are spans only with a tracer (``shared.publish_spans``).
        self.tracer = tracer
        self.topology = Topology.from_settings(settings)
        self.connection_name = connection_name
        self.connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._jobs: AbstractExchange | None = None
        self._dlx: AbstractExchange | None = None
        self._declared: set[str] = set()
        self._declare_lock = asyncio.Lock()

    async def connect(self, declare: bool = True) -> None:
        """Connect, and declare the exchanges and the dead-letter queue (unless ``declare`` is
        off: ``jobq broker redeclare`` recreates a queue that does not fit the settings)."""
        self.connection = await aio_pika.connect_robust(
            self.settings.amqp_url,
            client_properties={"connection_name": self.connection_name},
            timeout=self.settings.publish_timeout_seconds,
            # aio-pika waits 5 s between attempts; after a broker restart that wait was most
            # of the time until work flowed again (tests/chaos).
            reconnect_interval=1,
        )
        self._channel = await self.connection.channel(
            publisher_confirms=True, on_return_raises=True
        )
        if declare:
            await self._declare_exchanges(self._channel)

    async def close(self) -> None:
        if self.connection is not None:
            await self.connection.close()
            self.connection = None

    async def dead_letters_held(self) -> int:
        """Messages in the dead-letter queue; 0 if it does not exist."""
        try:
            return await self.dead_letters()
        except aiormq.exceptions.ChannelNotFoundEntity:
            return 0

    async def redeclare_dead_letters(self) -> None:
        """Delete the dead-letter queue and declare it as the settings say (its messages are
        gone from RabbitMQ; PostgreSQL keeps every dead job)."""
        await self.channel.queue_delete(self.topology.dead_queue)
        await self._declare_exchanges(self.channel)

    async def redeclare_queue(self, queue: str) -> int:
        """Delete a job queue's broker queue and declare it as the settings say; returns how
        many tickets it held. ``QueueInUse`` while a consumer is attached (stop the workers)."""
        try:
            held, consumers = await self.queue_state(queue)
        except aiormq.exceptions.ChannelNotFoundEntity:
            held, consumers = 0, 0
        if consumers:
            raise QueueInUse(f"queue {queue!r} has {consumers} consumers; stop its workers first")
        await self.channel.queue_delete(self.topology.queue_name(queue))
        self._declared.discard(self.topology.queue_name(queue))
        await self.ensure_queue(queue)
        return held

    async def _declare_exchanges(self, channel: AbstractChannel) -> None:
        t = self.topology
        self._jobs = await channel.declare_exchange(
            t.jobs_exchange, ExchangeType.DIRECT, durable=True
        )
        self._dlx = await channel.declare_exchange(t.dlx, ExchangeType.FANOUT, durable=True)
        async with _refusing_mismatch(t.dead_queue, "--dead-letters"):
            dead = await channel.declare_queue(
                t.dead_queue, durable=True, arguments=t.dead_queue_arguments()
            )
        await dead.bind(self._dlx)

    @property
    def connected(self) -> bool:
        """The connection is open (aio-pika reconnects a lost one by itself)."""
        return self.connection is not None and not self.connection.is_closed

    async def consumer_channel(self, prefetch: int) -> AbstractChannel:
        """A channel of its own for consuming, at most ``prefetch`` deliveries unacked."""
        if self.connection is None:
            raise RuntimeError("Broker.connect() first")
        channel = await self.connection.channel()
        await channel.set_qos(prefetch_count=prefetch)
        return channel

    @property
    def channel(self) -> AbstractChannel:
        if self._channel is None:
            raise RuntimeError("Broker.connect() first")
        return self._channel

    async def ensure_queue(self, queue: str, *, redeclare: bool = False) -> str:
        """Declare and bind ``jobq.q.<queue>`` once per process; returns the queue's name.
        ``TimeoutError`` if RabbitMQ does not answer within the publish timeout."""
        name = self.topology.queue_name(queue)
        if name in self._declared and not redeclare:
            return name
        async with asyncio.timeout(self.settings.publish_timeout_seconds), self._declare_lock:
            if name in self._declared and not redeclare:
                return name  # declared while this call waited for the lock
            async with _refusing_mismatch(name, queue):
                q = await self.channel.declare_queue(
                    name, durable=True, arguments=self.topology.queue_arguments()
                )
            await q.bind(self.topology.jobs_exchange, routing_key=queue)
            self._declared.add(name)
        return name

    async def queue_state(self, queue: str) -> tuple[int, int]:
        """``(ready messages, consumers)`` of a job queue."""
        return await self._passive(self.topology.queue_name(queue))

    async def dead_letters(self) -> int:
        """Messages in the dead-letter queue."""
        return (await self._passive(self.topology.dead_queue))[0]

    async def _passive(self, name: str) -> tuple[int, int]:
        """``(ready messages, consumers)`` of a broker queue, by passive declare on a
        throwaway channel (a missing queue closes that channel, not the publishing one);
        ``TimeoutError`` if RabbitMQ does not answer within the publish timeout."""
        if self.connection is None:
            raise RuntimeError("Broker.connect() first")
        try:
            async with asyncio.timeout(self.settings.publish_timeout_seconds):
                channel = await self.connection.channel(publisher_confirms=False)
                try:
                    q = await channel.declare_queue(name, passive=True)
                    result = q.declaration_result
                    return int(result.message_count or 0), int(result.consumer_count or 0)
                finally:  # a declare cut short by the timeout has closed the channel already
                    if not channel.is_closed:
                        await channel.close()
        except asyncio.CancelledError:
            # aiormq cancels the calls in flight when it gives a stuck connection up; that is
            # a lost connection to the caller, not its own cancellation (which goes on).
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            raise ConnectionError("the RabbitMQ connection was lost") from None

    async def delete_queue(self, queue: str) -> None:
        """Delete a job queue's broker queue, tickets and all; ``QueueInUse`` while a consumer
        is attached, ``DependencyUnavailable`` if RabbitMQ does not answer in time. (Quorum
        queues refuse ``if-unused``, and RabbitMQ answers that by closing the connection, so
        the consumers are counted first; a worker attaching in between loses its consumer.)"""
        name = self.topology.queue_name(queue)
        try:
            async with asyncio.timeout(self.settings.publish_timeout_seconds):
                try:
                    _, consumers = await self.queue_state(queue)
                except aiormq.exceptions.ChannelNotFoundEntity:
                    return  # never declared on the broker, or already deleted
                if consumers:
                    raise QueueInUse(
                        f"queue {queue!r} has {consumers} consumers; stop its workers first"
                    )
                self._declared.discard(name)
                await self.channel.queue_delete(name)
        except (TimeoutError, ConnectionError, aiormq.exceptions.AMQPError) as exc:
            raise DependencyUnavailable(f"RabbitMQ did not delete {name}: {exc!r}") from None

    async def publish(self, ticket: Ticket, why: str | None = None) -> None:
        """Publish one ticket and wait for its confirm; raises if returned, nacked or late."""
        spans = self._spans([ticket], why)
        try:
            async with asyncio.timeout(self.settings.publish_timeout_seconds):
                if not ticket.dead:
                    await self.ensure_queue(ticket.queue)
                [confirm] = await self._write(
                    await self._underlay(), spans.tickets if spans else [ticket]
                )
                try:
                    await confirm
                except aiormq.exceptions.PublishError:
                    self._returned(ticket)
                    raise
        except BaseException as exc:
            if spans:
                spans.end([exc])
            raise
        if spans:
            spans.end([None])

    def _spans(self, tickets: list[Ticket], why: str | None) -> PublishSpans | None:
        if self.tracer is None:  # nothing exports spans: make none (docs/design.md §7)
            return None
        return PublishSpans(self.tracer, self.topology, tickets, why)

    async def _underlay(self) -> aiormq.Channel:
        """aiormq's channel under the robust one (replaced after a reconnect)."""
        return cast(aiormq.Channel, await self.channel.get_underlay_channel())

    async def _write(
        self, channel: aiormq.Channel, tickets: list[Ticket]
    ) -> list[asyncio.Future[Any]]:
        """Write the frames of every ticket in one piece; return one confirm future each.

        This is what aiormq's ``basic_publish`` does for one message (docs/design.md §7), done
        for many: under the channel's lock the publishes get consecutive delivery tags, and a
        confirm (or a return, matched by message id) settles each future. Nothing is registered
        before the frames are queued, so a cancellation leaves no future the broker will not
        answer; a closed channel rejects what is pending (the futures end cancelled).
        """
        if channel.is_closed:
            raise aiormq.exceptions.ChannelInvalidStateError(f"{channel!r} closed")
        t = self.topology
        ids = [str(ticket.job_id) for ticket in tickets]
        payload = b"".join(
            frames.publish(
                channel.number,
                t.dlx if ticket.dead else t.jobs_exchange,
                ticket.queue,
                encode_ticket(ticket),
                max_content=channel.max_content_size,
                message_id=message_id,
                message_type=ticket.type,
                priority=ticket.priority,
                headers=headers(ticket, message_id),
            )
            for ticket, message_id in zip(tickets, ids, strict=True)
        )
        confirms: list[asyncio.Future[Any]] = []
        async with channel.lock:
            await channel.write_queue.put(ChannelFrame(payload=payload, should_close=False))
            for message_id in ids:  # no await from the put to here: the broker cannot answer yet
                channel.delivery_tag += 1
                confirm = channel.create_future()
                channel.confirmations[channel.delivery_tag] = confirm
                channel.message_id_delivery_tag[message_id] = channel.delivery_tag
                confirm.add_done_callback(_forget(channel, message_id))
                confirms.append(confirm)
        return confirms

    def _returned(self, ticket: Ticket) -> None:
        """Returned: nothing is bound for it (a deleted queue). Declare it again next time."""
        self._declared.discard(self.topology.queue_name(ticket.queue))

    async def publish_many(self, tickets: list[Ticket], why: str | None = None) -> list[Ticket]:
        """Publish tickets with their confirms in flight together; returns those confirmed.

        A ticket that is returned, nacked or times out is logged and left out: its job stays
        unpublished in PostgreSQL and the scheduler publishes it again. ``why`` names what made
        the publish, on its spans.
        """
        if not tickets:
            return []
        spans = self._spans(tickets, why)
        errors = await self._send(spans.tickets if spans else tickets)
        if spans:
            spans.end(errors)
        confirmed = []
        for ticket, error in zip(tickets, errors, strict=True):
            if isinstance(error, aiormq.exceptions.PublishError):
                self._returned(ticket)
            if error is not None:
                log.warning(
                    "publish not confirmed; the scheduler will retry",
                    extra={"job_id": str(ticket.job_id), "error": repr(error)},
                )
            else:
                confirmed.append(ticket)
        return confirmed

    async def _send(self, tickets: list[Ticket]) -> list[BaseException | None]:
        """Write the tickets and wait for their confirms: what became of each (``None``:
        confirmed)."""
        # One deadline for the batch, not a timer per message; queues declared once first.
        deadline = asyncio.get_running_loop().time() + self.settings.publish_timeout_seconds
        try:
            async with asyncio.timeout_at(deadline):
                for queue in {t.queue for t in tickets if not t.dead}:
                    await self.ensure_queue(queue)
                confirms = await self._write(await self._underlay(), tickets)
        except Exception as exc:
            log.warning("publish failed; the scheduler will retry", extra={"error": repr(exc)})
            return [exc] * len(tickets)
        await asyncio.wait(confirms, timeout=max(0.0, deadline - asyncio.get_running_loop().time()))
        errors: list[BaseException | None] = []
        for confirm in confirms:
            if not confirm.done():
                confirm.cancel()
                errors.append(TimeoutError("no confirm within the publish timeout"))
            elif confirm.cancelled():  # aiormq cancels pending confirms when a channel closes
                errors.append(ConnectionError("channel closed before the confirm"))
            else:
                errors.append(confirm.exception())
        return errors
