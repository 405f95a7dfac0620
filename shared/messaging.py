"""RabbitMQ: topology (docs/design.md §4), the ticket codec, and publishing with confirms.

A message is a ticket saying "job X may run now"; the job itself lives in PostgreSQL. Losing
or duplicating a ticket costs latency, never a job: the worker's claim decides, and the
scheduler publishes again what was not confirmed.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import aio_pika
import aiormq
import msgspec
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractRobustConnection,
    DeliveryMode,
    ExchangeType,
)
from aiormq import spec
from opentelemetry.trace import NoOpTracer, SpanKind, Tracer

from shared.errors import DecodeError, DependencyUnavailable, QueueInUse

if TYPE_CHECKING:
    from shared.config import Settings

log = logging.getLogger("jobq.broker")


class TicketBody(msgspec.Struct, forbid_unknown_fields=False):
    """The message body: ids only; the payload stays in PostgreSQL."""

    job_id: uuid.UUID
    type: str
    attempt: int


@dataclass(frozen=True, slots=True)
class Ticket:
    """Everything needed to publish one job's message.

    ``dead`` tickets go to the dead-letter exchange with ``reason``; the rest to the job's queue.
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


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(TicketBody)


def encode_ticket(ticket: Ticket) -> bytes:
    return _encoder.encode(TicketBody(ticket.job_id, ticket.type, ticket.attempt))


PERSISTENT = int(DeliveryMode.PERSISTENT)


def _properties(ticket: Ticket) -> spec.Basic.Properties:
    headers: dict[str, Any] = {}
    if ticket.traceparent:
        headers["traceparent"] = ticket.traceparent
    if ticket.dead:
        headers["x-jobq-reason"] = (ticket.reason or "dead")[:1000]
        headers["x-jobq-queue"] = ticket.queue
        if ticket.tenant:
            headers["x-jobq-tenant"] = ticket.tenant
    return spec.Basic.Properties(
        message_id=str(ticket.job_id),
        content_type="application/json",
        delivery_mode=PERSISTENT,
        priority=ticket.priority,
        message_type=ticket.type,
        headers=headers,
    )


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

    @classmethod
    def from_settings(cls, settings: Settings) -> Topology:
        return cls(settings.broker_prefix, settings.queue_type, settings.delivery_limit)

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
        return {"x-queue-type": self.queue_type}


class Broker:
    """One robust connection; a confirming publish channel; queues declared on first use."""

    def __init__(
        self, settings: Settings, connection_name: str, tracer: Tracer | None = None
    ) -> None:
        self.settings = settings
        self.tracer = tracer or NoOpTracer()
        self.topology = Topology.from_settings(settings)
        self.connection_name = connection_name
        self.connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._jobs: AbstractExchange | None = None
        self._dlx: AbstractExchange | None = None
        self._declared: set[str] = set()
        self._declare_lock = asyncio.Lock()

    async def connect(self) -> None:
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
        await self._declare_exchanges(self._channel)

    async def close(self) -> None:
        if self.connection is not None:
            await self.connection.close()
            self.connection = None

    async def _declare_exchanges(self, channel: AbstractChannel) -> None:
        t = self.topology
        self._jobs = await channel.declare_exchange(
            t.jobs_exchange, ExchangeType.DIRECT, durable=True
        )
        self._dlx = await channel.declare_exchange(t.dlx, ExchangeType.FANOUT, durable=True)
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
        """Declare and bind ``jobq.q.<queue>`` once per process; returns the queue's name."""
        name = self.topology.queue_name(queue)
        if name in self._declared and not redeclare:
            return name
        async with self._declare_lock:
            if name in self._declared and not redeclare:
                return name  # declared while this call waited for the lock
            q = await self.channel.declare_queue(
                name, durable=True, arguments=self.topology.queue_arguments()
            )
            await q.bind(self.topology.jobs_exchange, routing_key=queue)
            self._declared.add(name)
        return name

    async def queue_state(self, queue: str) -> tuple[int, int]:
        """``(ready messages, consumers)`` of a job queue, by passive declare on a throwaway
        channel (a missing queue closes that channel, not the publishing one)."""
        if self.connection is None:
            raise RuntimeError("Broker.connect() first")
        channel = await self.connection.channel(publisher_confirms=False)
        try:
            q = await channel.declare_queue(self.topology.queue_name(queue), passive=True)
            result = q.declaration_result
            return int(result.message_count or 0), int(result.consumer_count or 0)
        finally:
            if not channel.is_closed:
                await channel.close()

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

    async def publish(self, ticket: Ticket) -> None:
        """Publish one ticket and wait for its confirm; raises if returned, nacked or late."""
        async with asyncio.timeout(self.settings.publish_timeout_seconds):
            if not ticket.dead:
                await self.ensure_queue(ticket.queue)
            await self._send(await self._underlay(), ticket)

    async def _underlay(self) -> aiormq.Channel:
        """aiormq's channel under the robust one (replaced after a reconnect)."""
        return cast(aiormq.Channel, await self.channel.get_underlay_channel())

    async def _send(self, channel: aiormq.Channel, ticket: Ticket) -> None:
        """One ``basic.publish`` on aiormq's channel under aio-pika's robust one: aio-pika's
        ``Message`` and ``Exchange.publish`` doubled the CPU a ticket costs (docs/design.md
        §7). ``wait=False``: the confirm is what is awaited, not the socket's drain."""
        t = self.topology
        exchange = t.dlx if ticket.dead else t.jobs_exchange
        try:
            await channel.basic_publish(
                encode_ticket(ticket),
                exchange=exchange,
                routing_key=ticket.queue,
                properties=_properties(ticket),
                mandatory=True,
                wait=False,
            )
        except aiormq.exceptions.DeliveryError:
            # Returned: nothing is bound for it (a deleted queue). Declare it again next time.
            self._declared.discard(t.queue_name(ticket.queue))
            raise

    async def publish_many(self, tickets: list[Ticket]) -> list[Ticket]:
        """Publish tickets with their confirms in flight together; returns those confirmed.

        A ticket that is returned, nacked or times out is logged and left out: its job stays
        unpublished in PostgreSQL and the scheduler publishes it again.
        """
        if not tickets:
            return []
        with self.tracer.start_as_current_span(
            f"publish {self.topology.jobs_exchange}",
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": "rabbitmq",
                "messaging.batch.message_count": len(tickets),
            },
        ):
            # One deadline for the batch, not a timer per message; queues declared once first.
            deadline = asyncio.get_running_loop().time() + self.settings.publish_timeout_seconds
            try:
                async with asyncio.timeout_at(deadline):
                    for queue in {t.queue for t in tickets if not t.dead}:
                        await self.ensure_queue(queue)
                    channel = await self._underlay()
            except Exception as exc:
                log.warning(
                    "queues not declared; the scheduler will retry", extra={"error": repr(exc)}
                )
                return []
            sends = [asyncio.ensure_future(self._send(channel, t)) for t in tickets]
            await asyncio.wait(
                sends, timeout=max(0.0, deadline - asyncio.get_running_loop().time())
            )
        confirmed = []
        for ticket, send in zip(tickets, sends, strict=True):
            error: BaseException | None
            if not send.done():
                send.cancel()
                error = TimeoutError("no confirm within the publish timeout")
            elif send.cancelled():  # aiormq cancels pending confirms when a channel closes
                error = ConnectionError("channel closed before the confirm")
            else:
                error = send.exception()
            if error is not None:
                log.warning(
                    "publish not confirmed; the scheduler will retry",
                    extra={"job_id": str(ticket.job_id), "error": repr(error)},
                )
            else:
                confirmed.append(ticket)
        return confirmed
