"""Group commit: many callers' items flushed together, one flush in flight at a time.

While one flush runs, new items accumulate; the next flush takes them all (up to ``max_size``).
At low load a flush holds one item and adds no delay; under load batches grow on their own,
which is what turns per-job round trips into per-batch ones (notes/performance.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Batcher(Generic[T, R]):
    """Coalesces ``submit(item)`` calls into ``flush(items)`` calls returning aligned results."""

    def __init__(self, flush: Callable[[list[T]], Awaitable[Sequence[R]]], max_size: int = 500):
        self._flush = flush
        self._max_size = max_size
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._runner: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._run())
        return await future

    async def _run(self) -> None:
        while self._pending:
            batch, self._pending = (
                self._pending[: self._max_size],
                self._pending[self._max_size :],
            )
            await self._flush_batch(batch)

    async def _flush_batch(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            results = await self._flush([item for item, _ in batch])
        except Exception as exc:
            if len(batch) > 1:
                # One bad item must not fail its neighbours: flush each on its own.
                for entry in batch:
                    await self._flush_batch([entry])
                return
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)

    async def drain(self) -> None:
        """Wait until every submitted item has been flushed."""
        while self._runner is not None and not self._runner.done():
            await asyncio.shield(self._runner)
