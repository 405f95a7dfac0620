"""One ack(multiple) only when it settles exactly the batch."""

from __future__ import annotations

from services.worker.acks import Outstanding


def test_a_batch_holding_every_lower_tag_is_covered() -> None:
    o = Outstanding()
    for tag in range(1, 6):
        o.add(1, tag)
    assert o.covers(1, {1, 2, 3})
    o.settle(1, {1, 2, 3})
    assert len(o) == 2
    assert o.covers(1, {4, 5})


def test_a_waiting_lower_tag_forbids_a_multiple_ack() -> None:
    o = Outstanding()
    for tag in (1, 2, 3):
        o.add(1, tag)
    assert not o.covers(1, {2, 3})  # tag 1 still waits in the buffer
    assert o.covers(1, {1})


def test_channels_are_separate() -> None:
    o = Outstanding()
    o.add(1, 1)
    o.add(2, 1)
    o.add(2, 2)
    assert o.covers(2, {1, 2})
    o.settle(2, {1, 2})
    assert len(o) == 1
    assert not o.covers(1, {2})
