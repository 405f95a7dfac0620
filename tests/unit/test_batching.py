"""Group commit: concurrent submits share flushes; results and errors reach each caller."""

from __future__ import annotations

import asyncio

import pytest

from shared.batching import Batcher


async def test_concurrent_items_share_one_flush_and_get_their_own_results() -> None:
    flushes: list[list[int]] = []

    async def flush(items: list[int]) -> list[int]:
        flushes.append(items)
        await asyncio.sleep(0.01)
        return [i * 10 for i in items]

    batcher: Batcher[int, int] = Batcher(flush, max_size=50)
    results = await asyncio.gather(*(batcher.submit(i) for i in range(120)))
    assert results == [i * 10 for i in range(120)]
    assert len(flushes) <= 4
    assert all(len(f) <= 50 for f in flushes)


async def test_a_failed_flush_fails_its_callers_only() -> None:
    async def flush(items: list[int]) -> list[int]:
        if 3 in items:
            raise RuntimeError("db down")
        return items

    batcher: Batcher[int, int] = Batcher(flush, max_size=1)
    results = await asyncio.gather(*(batcher.submit(i) for i in range(5)), return_exceptions=True)
    assert [r for r in results if isinstance(r, RuntimeError)]
    assert results[4] == 4
    with pytest.raises(RuntimeError):
        await batcher.submit(3)
