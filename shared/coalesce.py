"""Run calls made at the same moment as one: a batch per round trip instead of a round trip per
call (docs/design.md §7).

No timer holds a call back. A call that finds a free runner starts one at once, so a lone call
costs one round trip; calls that arrive while every runner is busy gather and go together in the
next run. Batches therefore grow with the load and shrink with it, by themselves.

A run takes the trace context of the first call of its batch: its statement is a span in the
trace of a call it serves (a lone submit's INSERT under its request), never under a call that
a runner served long before.
"""

from __future__ import annotations

import asyncio
import copy
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from opentelemetry import context
from opentelemetry.context import Context

T = TypeVar("T")
R = TypeVar("R")

#: Runs a batch; returns a result or an exception per item, in order. An exception raised
#: instead fails every item of the batch with it.
BatchRun = Callable[[list[T]], Awaitable[Sequence[R | Exception]]]


class Coalescer(Generic[T, R]):
    """``await coalescer(item)`` returns ``item``'s result from a batched ``run``.

    At most ``concurrency`` runs are under way, each of at most ``max_items``. A run that raises
    an error ``isolate`` accepts is tried again item by item, so one bad item fails alone
    (not for errors every item would meet, such as the database being down).
    """

    def __init__(
        self,
        run: BatchRun[T, R],
        *,
        max_items: int,
        concurrency: int = 1,
        isolate: Callable[[Exception], bool] | None = None,
    ) -> None:
        if max_items < 1 or concurrency < 1:
            raise ValueError("max_items and concurrency must be at least 1")
        self._run = run
        self.max_items = max_items
        self.concurrency = concurrency
        self.isolate = isolate
        self._waiting: deque[tuple[T, asyncio.Future[R], Context]] = deque()
        self._runners: set[asyncio.Task[None]] = set()
        #: Runners not yet returned (a finished task leaves ``_runners`` a step later).
        self._active = 0

    async def __call__(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future, context.get_current()))
        if self._active < self.concurrency:
            self._active += 1
            runner = asyncio.create_task(self._drain())
            self._runners.add(runner)
            runner.add_done_callback(self._runners.discard)
        return await future

    async def _drain(self) -> None:
        try:
            while self._waiting:
                await self._run_next()
        finally:
            self._active -= 1  # no await since the loop saw nothing waiting

    async def _run_next(self) -> None:
        batch: list[tuple[T, asyncio.Future[R]]] = []
        first: Context | None = None
        while self._waiting and len(batch) < self.max_items:
            item, future, ctx = self._waiting.popleft()
            if not future.cancelled():  # its caller left before the run: nothing done yet
                batch.append((item, future))
                if first is None:
                    first = ctx
        if batch and first is not None:
            token = context.attach(first)
            try:
                await self._run_batch(batch)
            finally:
                context.detach(token)

    async def _run_batch(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            results: Sequence[R | Exception] = await self._run([item for item, _ in batch])
        except Exception as exc:
            if len(batch) > 1 and self.isolate is not None and self.isolate(exc):
                for entry in batch:
                    await self._run_batch([entry])
                return
            # A copy each: a raised exception's traceback is written into the object.
            results = [exc, *(copy.copy(exc) for _ in batch[1:])]
        except BaseException:
            # Cancelled (shutting down): its callers must not wait forever.
            for _, future in batch:
                future.cancel()
            raise
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def close(self) -> None:
        """Wait for the runs under way (and what is waiting) to finish."""
        while self._runners:
            await asyncio.gather(*self._runners, return_exceptions=True)
