"""In-process services on the real PostgreSQL and RabbitMQ: the API through Litestar's test
client, workers and schedulers as asyncio tasks."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any

import httpx
import pytest
import uvicorn
from litestar import Litestar
from litestar.testing import AsyncTestClient
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy.ext.asyncio import AsyncEngine

from services.api.app import create_app
from services.api.server import server_config
from services.scheduler.loop import Scheduler
from services.worker.registry import BUILTIN, Registry
from services.worker.runner import Worker
from shared.config import Settings
from shared.db.leases import LeaseStore
from shared.db.sweeps import SweepStore
from shared.db.tickets import TicketStore
from shared.messaging import Broker
from shared.outbox import Outbox
from tests.procs import free_port

#: What in-process workers serve: the built-in handlers and the tests' own.
REGISTRY = Registry.from_modules([BUILTIN, "tests.integration.handlers"])


@pytest.fixture
def spans() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracer_provider(spans: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    return provider


@pytest.fixture
async def api(
    settings: Settings, clean: None, tracer_provider: TracerProvider
) -> AsyncIterator[AsyncTestClient[Litestar]]:
    async with AsyncTestClient(app=create_app(settings, tracer_provider)) as client:
        yield client


@dataclass
class RunningWorker:
    worker: Worker
    broker: Broker
    stop: asyncio.Event
    task: asyncio.Task[None]

    async def shutdown(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 30)
        await self.broker.close()


StartWorker = Callable[..., Awaitable[RunningWorker]]


@pytest.fixture
async def start_worker(
    settings: Settings, engine: AsyncEngine, clean: None, tracer_provider: TracerProvider
) -> AsyncIterator[StartWorker]:
    """Start in-process workers (settings overridable per worker); all stop at teardown."""
    started: list[RunningWorker] = []

    async def start(**overrides: Any) -> RunningWorker:
        s = replace(settings, **overrides)
        broker = Broker(s, "jobq-test-worker")
        await broker.connect()
        outbox = Outbox(TicketStore(engine), broker, s.mark_delay_seconds)
        worker = Worker(
            s, LeaseStore(engine), outbox, broker, REGISTRY, tracer_provider.get_tracer("w")
        )
        stop = asyncio.Event()
        running = RunningWorker(worker, broker, stop, asyncio.create_task(worker.run(stop)))
        started.append(running)
        await wait_for(lambda: len(worker._consumers) == len(s.consumed_queues))
        return running

    yield start
    for running in started:
        if not running.task.done():
            await running.shutdown()


@pytest.fixture
async def scheduler(
    settings: Settings, engine: AsyncEngine, clean: None, tracer_provider: TracerProvider
) -> AsyncIterator[Scheduler]:
    """A scheduler to tick by hand."""
    broker = Broker(settings, "jobq-test-scheduler")
    await broker.connect()
    outbox = Outbox(TicketStore(engine), broker, mark_delay=0)
    yield Scheduler(settings, SweepStore(engine), outbox, broker, tracer_provider.get_tracer("s"))
    await broker.close()


@asynccontextmanager
async def ticking(scheduler: Scheduler) -> AsyncIterator[None]:
    """Run the scheduler's loop for the duration of the block."""
    stop = asyncio.Event()
    task = asyncio.create_task(scheduler.run(stop))
    try:
        yield
    finally:
        stop.set()
        await task


async def wait_for(
    condition: Callable[[], Any], within: float = 15.0, interval: float = 0.05
) -> Any:
    """Poll ``condition`` (sync or async) until truthy; fail the test at the deadline."""
    deadline = time.monotonic() + within
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {within}s")
        await asyncio.sleep(interval)


@asynccontextmanager
async def serving(settings: Settings, app: Litestar | None = None) -> AsyncIterator[int]:
    """The app (by default jobq's) behind the server ``jobq api`` runs (``server_config``), on
    this event loop and a free port, which it yields."""
    port = free_port()
    app = app or create_app(settings)
    server = uvicorn.Server(server_config(settings, app, "127.0.0.1", port))
    task = asyncio.create_task(server.serve())
    try:
        await wait_for(lambda: server.started, within=10)
        yield port
    finally:
        server.should_exit = True
        await task


@asynccontextmanager
async def listening(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The app behind a real HTTP server on this event loop. Litestar's test client runs the
    app on another thread's loop, one request at a time; this lets requests overlap."""
    async with (
        serving(settings) as port,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client,
    ):
        yield client
