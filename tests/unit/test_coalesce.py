"""The coalescer: batches grow with the load, and each caller gets its own outcome."""

from __future__ import annotations

import asyncio

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from shared.coalesce import Coalescer


class Recorder:
    """A batch run that records each batch and waits for ``gate`` before answering."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def __call__(self, items: list[int]) -> list[int | Exception]:
        self.batches.append(items)
        await self.gate.wait()
        return [ValueError(f"odd {i}") if i % 2 else i * 10 for i in items]


async def test_a_lone_call_runs_at_once_and_calls_during_a_run_go_together_next() -> None:
    run = Recorder()
    c: Coalescer[int, int] = Coalescer(run, max_items=100)
    assert await c(2) == 20
    run.gate.clear()
    first = asyncio.ensure_future(c(4))
    await asyncio.sleep(0)  # the first run starts and waits at the gate
    rest = [asyncio.ensure_future(c(i)) for i in (6, 8, 10)]
    await asyncio.sleep(0)
    run.gate.set()
    assert await asyncio.gather(first, *rest) == [40, 60, 80, 100]
    assert run.batches == [[2], [4], [6, 8, 10]]


async def test_each_caller_gets_its_own_error_and_the_others_their_results() -> None:
    c: Coalescer[int, int] = Coalescer(Recorder(), max_items=100)
    results = await asyncio.gather(c(1), c(2), c(3), return_exceptions=True)
    assert isinstance(results[0], ValueError)
    assert str(results[0]) == "odd 1"
    assert results[1] == 20
    assert isinstance(results[2], ValueError)


async def test_a_failed_run_fails_each_call_of_its_batch_and_the_next_run_goes_on() -> None:
    calls = 0

    async def flaky(items: list[int]) -> list[int | Exception]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("database went away")
        return list[int | Exception](items)

    c: Coalescer[int, int] = Coalescer(flaky, max_items=100)
    with pytest.raises(ConnectionError):
        await c(1)
    assert await c(2) == 2


async def test_batches_hold_at_most_max_items_and_at_most_concurrency_runs_at_once() -> None:
    running = peak = 0
    sizes: list[int] = []

    async def slow(items: list[int]) -> list[int | Exception]:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        sizes.append(len(items))
        await asyncio.sleep(0.01)
        running -= 1
        return list(items)

    c: Coalescer[int, int] = Coalescer(slow, max_items=4, concurrency=2)
    assert await asyncio.gather(*(c(i) for i in range(20))) == list(range(20))
    assert peak == 2
    assert max(sizes) == 4
    assert sum(sizes) == 20


async def test_a_caller_that_left_before_its_run_is_not_run() -> None:
    run = Recorder()
    run.gate.clear()
    c: Coalescer[int, int] = Coalescer(run, max_items=10)
    first = asyncio.ensure_future(c(0))
    await asyncio.sleep(0)
    gone = asyncio.ensure_future(c(2))
    kept = asyncio.ensure_future(c(4))
    await asyncio.sleep(0)
    gone.cancel()
    run.gate.set()
    assert list(await asyncio.gather(first, kept)) == [0, 40]
    await c.close()
    assert run.batches == [[0], [4]]


async def test_a_run_failing_for_one_item_is_tried_item_by_item_when_isolated() -> None:
    async def run(items: list[int]) -> list[int | Exception]:
        if 3 in items:
            raise ValueError("item 3 is bad")
        return list[int | Exception](items)

    def isolated(exc: Exception) -> bool:
        return isinstance(exc, ValueError)

    c: Coalescer[int, int] = Coalescer(run, max_items=100, isolate=isolated)
    results = await asyncio.gather(*(c(i) for i in range(6)), return_exceptions=True)
    assert [r for r in results if not isinstance(r, Exception)] == [0, 1, 2, 4, 5]
    assert isinstance(results[3], ValueError)
    # An error every item would meet fails the batch as it is
    c = Coalescer(run, max_items=100, isolate=lambda exc: False)
    results = await asyncio.gather(*(c(i) for i in range(6)), return_exceptions=True)
    assert all(isinstance(r, ValueError) for r in results)


async def test_each_run_is_in_the_trace_context_of_its_first_call() -> None:
    tracer = TracerProvider().get_tracer("t")
    seen: list[int] = []

    async def run(items: list[int]) -> list[int]:
        seen.append(trace.get_current_span().get_span_context().trace_id)
        await asyncio.sleep(0.01)
        return items

    coalescer: Coalescer[int, int] = Coalescer(run, max_items=10)

    async def call(n: int) -> tuple[int, int]:
        with tracer.start_as_current_span(f"request {n}") as span:
            await coalescer(n)
            return n, span.get_span_context().trace_id

    first = asyncio.create_task(call(0))
    await asyncio.sleep(0)  # the first run starts; the next two wait for it, then go together
    traces = dict(await asyncio.gather(first, call(1), call(2)))
    assert seen == [traces[0], traces[1]]
