"""The worker's parts that need no services: one attempt's outcome, and the delivery buffer."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from services.worker.deliveries import DeliveryBuffer
from services.worker.execution import Failed, Succeeded, attempt
from shared.errors import InvalidPayload
from shared.messaging import TicketBody


async def test_a_returned_value_is_stored_as_json() -> None:
    async def handler() -> Any:
        return {"n": 1, "s": "ü"}

    assert await attempt(handler, 5) == Succeeded('{"n":1,"s":"ü"}')


@pytest.mark.parametrize(
    ("result", "why"),
    [(1 + 2j, "not JSON"), (object(), "not JSON"), ("a\x00b", "NUL")],
)
async def test_a_value_that_cannot_be_stored_is_a_permanent_failure(result: Any, why: str) -> None:
    async def handler() -> Any:
        return result

    outcome = await attempt(handler, 5)
    assert isinstance(outcome, Failed)
    assert outcome.permanent
    assert why in str(outcome.error)


async def test_a_raised_error_fails_the_attempt_and_permanent_ones_say_so() -> None:
    async def flaky() -> Any:
        raise ConnectionError("upstream down")

    async def bad_payload() -> Any:
        raise InvalidPayload("no")

    outcome = await attempt(flaky, 5)
    assert isinstance(outcome, Failed)
    assert not outcome.permanent
    assert isinstance(outcome.error, ConnectionError)
    outcome = await attempt(bad_payload, 5)
    assert isinstance(outcome, Failed)
    assert outcome.permanent


async def test_an_attempt_past_its_timeout_fails_naming_it() -> None:
    async def slow() -> Any:
        await asyncio.sleep(10)

    outcome = await attempt(slow, 0.05)
    assert isinstance(outcome, Failed)
    assert isinstance(outcome.error, TimeoutError)
    assert "timeout_seconds=0.05" in str(outcome.error)


async def test_a_cancelled_attempt_is_no_outcome_its_canceller_decides() -> None:
    async def slow() -> Any:
        await asyncio.sleep(10)

    task = asyncio.ensure_future(attempt(slow, 5))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@dataclass
class FakeMessage:
    delivery_tag: int
    priority: int = 0
    routing_key: str | None = "default"
    headers: Mapping[str, Any] = field(default_factory=dict)
    settled: list[str] = field(default_factory=list)

    async def ack(self, multiple: bool = False) -> None:
        self.settled.append("ack-multiple" if multiple else "ack")

    async def nack(self, multiple: bool = False, requeue: bool = True) -> None:
        self.settled.append("nack")

    async def reject(self, requeue: bool = False) -> None:
        self.settled.append("reject")


def ticket() -> TicketBody:
    return TicketBody(uuid.uuid4(), "noop", 0)


def buffer_of(*priorities: int) -> tuple[DeliveryBuffer, list[FakeMessage]]:
    buffer, messages = DeliveryBuffer(), []
    for tag, priority in enumerate(priorities, start=1):
        m = FakeMessage(tag, priority)
        messages.append(m)
        buffer.add(m, ticket(), priority, channel=1)
    return buffer, messages


def test_deliveries_are_taken_highest_priority_first_then_oldest() -> None:
    buffer, _ = buffer_of(1, 9, 5, 9)
    assert [d.tag for d in buffer.take(3)] == [2, 4, 3]
    assert [d.tag for d in buffer.take(3)] == [1]
    assert len(buffer) == 0


def test_tenants_take_turns_within_a_priority_however_many_each_has_buffered() -> None:
    buffer = DeliveryBuffer()
    flood = [FakeMessage(tag, 5, headers={"x-jobq-tenant": "flood"}) for tag in range(1, 101)]
    for m in flood:
        buffer.add(m, ticket(), 5, channel=1)
    assert [d.tag for d in buffer.take(3)] == [1, 2, 3]
    victim = [FakeMessage(tag, 5, headers={"x-jobq-tenant": "victim"}) for tag in (101, 102)]
    for m in victim:
        buffer.add(m, ticket(), 5, channel=1)
    urgent = FakeMessage(103, 9, headers={"x-jobq-tenant": "flood"})
    buffer.add(urgent, ticket(), 9, channel=1)
    # priority first; then the victim goes at once and its two alternate with the flood
    assert [d.tag for d in buffer.take(6)] == [103, 101, 4, 102, 5, 6]
    assert [d.tag for d in buffer.take(200)] == list(range(7, 101))


async def test_a_claimed_batch_is_acked_in_one_frame_only_when_that_settles_exactly_it() -> None:
    buffer, messages = buffer_of(5, 5, 5, 1)
    batch = buffer.take(3)  # tags 1..3; tag 4 (low priority) still waits
    await buffer.settle(batch, "ack")
    assert [m.settled for m in messages] == [[], [], ["ack-multiple"], []]
    # Now tag 4 and a later tag 5, taken apart from tag 4: acked one by one
    buffer.add(m5 := FakeMessage(5, 9), ticket(), 9, channel=1)
    [d5] = buffer.take(1)
    await buffer.settle([d5], "ack")
    assert m5.settled == ["ack"]
    [d4] = buffer.take(1)
    await buffer.settle([d4], "reject")
    assert messages[3].settled == ["reject"]


async def test_acking_a_subset_that_skips_an_outstanding_tag_goes_one_by_one() -> None:
    buffer, messages = buffer_of(9, 1, 9)
    batch = buffer.take(2)  # tags 1 and 3; tag 2 is outstanding
    await buffer.settle(batch, "ack")
    assert [m.settled for m in messages] == [["ack"], [], ["ack"]]


def test_old_deliveries_are_taken_and_a_retried_claim_asks_for_a_fresh_lease() -> None:
    buffer, _ = buffer_of(5, 5)
    assert buffer.take_older_than(time.monotonic() - 60) == []
    old = buffer.take_older_than(time.monotonic() + 1)
    assert [d.tag for d in old] == [1, 2]
    first = old[0].lease
    old[0].retry_with_fresh_lease()
    assert old[0].tried == [first]
    assert old[0].lease != first
