"""Deliveries waiting for a free slot, highest priority first, tenants taking turns, and how
they are settled.

Within a priority the buffer is fair between tenants (start-time fair queuing): a delivery's
turn is one past its tenant's previous one, and never before the turn of the last delivery
taken, so a tenant with a few deliveries beside another's hundreds (a flood the worker has
prefetched) waits for one turn, not for the hundreds (docs/design.md §2.2).

A delivery is acked once the claim of its job commits (docs/design.md §3.3); acks of a whole
claimed batch go in one ``basic.ack(multiple=True)`` when that settles exactly the batch
(``services.worker.acks``). Nothing here touches PostgreSQL.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from services.worker.acks import Outstanding
from shared.messaging import TENANT_HEADER

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from opentelemetry.trace import SpanContext

    from shared.messaging import TicketBody

log = logging.getLogger("jobq.worker")

Settle = Literal["ack", "nack", "reject"]
#: Past this many tenants seen, those with no turn ahead are forgotten.
MAX_TENANTS_REMEMBERED = 1000


class Message(Protocol):
    """What the buffer needs of a broker delivery (aio-pika's ``IncomingMessage``)."""

    @property
    def delivery_tag(self) -> int | None: ...

    @property
    def routing_key(self) -> str | None: ...

    @property
    def priority(self) -> int | None: ...

    @property
    def headers(self) -> Mapping[str, Any]: ...

    async def ack(self, multiple: bool = False) -> None: ...

    async def nack(self, multiple: bool = False, requeue: bool = True) -> None: ...

    async def reject(self, requeue: bool = False) -> None: ...


@dataclass(order=True)
class Delivery:
    #: ``(-priority, turn, arrival)``.
    sort_key: tuple[int, int, int]
    message: Message = field(compare=False)
    ticket: TicketBody = field(compare=False)
    received: float = field(compare=False)
    #: The underlying AMQP channel it came on (delivery tags are per channel).
    channel: int = field(compare=False)
    #: The lease id its claim asks for; a retry asks for a fresh one and names the earlier
    #: ones (``tried``), whose claim may have committed with its reply lost.
    lease: uuid.UUID = field(compare=False, default_factory=uuid.uuid4)
    tried: list[uuid.UUID] = field(compare=False, default_factory=list)
    #: The span of its delivery (aio-pika's instrumentation), for the attempt to link.
    delivered: SpanContext | None = field(compare=False, default=None)

    @property
    def tag(self) -> int:
        return int(self.message.delivery_tag or 0)

    def retry_with_fresh_lease(self) -> None:
        """Its claim failed, and may have committed: the next asks for a new lease id and
        names this one."""
        self.tried.append(self.lease)
        self.lease = uuid.uuid4()


class DeliveryBuffer:
    """The deliveries received and not yet settled that wait for a slot."""

    def __init__(self) -> None:
        self._heap: list[Delivery] = []
        self._outstanding = Outstanding()
        self._seq = itertools.count()
        #: The turn of the last delivery taken, and the next turn of each tenant seen.
        self._turn = 0
        self._next_turn: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._heap)

    def add(
        self,
        message: Message,
        ticket: TicketBody,
        priority: int,
        channel: int,
        delivered: SpanContext | None = None,
    ) -> None:
        tenant = str(message.headers.get(TENANT_HEADER, ""))
        turn = max(self._turn, self._next_turn.get(tenant, 0))
        self._next_turn[tenant] = turn + 1
        d = Delivery(
            (-priority, turn, next(self._seq)), message, ticket, time.monotonic(), channel,
            delivered=delivered,
        )  # fmt: skip
        self._outstanding.add(d.channel, d.tag)
        heapq.heappush(self._heap, d)

    def take(self, n: int) -> list[Delivery]:
        """Up to ``n`` deliveries, highest priority first, then by turn (tenants alternate),
        then oldest."""
        taken = [heapq.heappop(self._heap) for _ in range(min(n, len(self._heap)))]
        if taken:
            self._turn = max(self._turn, max(d.sort_key[1] for d in taken))
            if len(self._next_turn) > MAX_TENANTS_REMEMBERED:
                # Tenants whose next turn has passed would start at the current turn anyway.
                self._next_turn = {t: n for t, n in self._next_turn.items() if n > self._turn}
        return taken

    def put_back(self, deliveries: Iterable[Delivery]) -> None:
        for d in deliveries:
            heapq.heappush(self._heap, d)

    def take_all(self) -> list[Delivery]:
        taken, self._heap = self._heap, []
        return taken

    def take_older_than(self, received_before: float) -> list[Delivery]:
        """Deliveries received before ``received_before`` (``time.monotonic()``)."""
        old = [d for d in self._heap if d.received < received_before]
        if old:
            self._heap = [d for d in self._heap if d.received >= received_before]
            heapq.heapify(self._heap)
        return old

    async def settle(self, deliveries: list[Delivery], how: Settle) -> None:
        """Ack, requeue or dead-letter deliveries taken from the buffer: acks of a whole
        channel prefix in one ``ack(multiple=True)``, the rest one by one."""
        by_channel: dict[int, list[Delivery]] = {}
        for d in deliveries:
            by_channel.setdefault(d.channel, []).append(d)
        for channel, group in by_channel.items():
            tags = {d.tag for d in group}
            if how == "ack" and len(group) > 1 and self._outstanding.covers(channel, tags):
                await settle(max(group, key=lambda d: d.tag).message, "ack", multiple=True)
            else:
                for d in group:
                    await settle(d.message, how)
            self._outstanding.settle(channel, tags)


async def settle(message: Message, how: Settle, multiple: bool = False) -> None:
    """Ack, requeue or dead-letter one delivery; a closed channel means the broker already
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
