"""RabbitMQ that stops answering without closing anything (a half-open connection, made by the
fault suite's proxy): every broker call a worker or a scheduler waits for ends in time, so
neither a tick nor a graceful stop waits for the connection's heartbeat to give up (three
minutes at aio-pika's default)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from sqlalchemy.ext.asyncio import AsyncEngine

from services.scheduler.loop import Scheduler
from shared.config import Settings
from shared.db.jobs import JobStore
from shared.db.sweeps import SweepStore
from shared.db.tickets import TicketStore
from shared.messaging import Broker
from shared.outbox import Outbox
from tests.chaos.proxy import Proxy
from tests.integration.conftest import StartWorker
from tests.integration.test_worker import new_job, submit

pytestmark = pytest.mark.integration

#: Every broker call's limit here (``JOBQ_PUBLISH_TIMEOUT_SECONDS``).
TIMEOUT = 0.5


@pytest.fixture
async def link(settings: Settings) -> AsyncIterator[Proxy]:
    """A proxy in front of RabbitMQ, to silence it."""
    proxy = await Proxy.to(settings.amqp_url)
    yield proxy
    await proxy.close()


@pytest.fixture
def through(settings: Settings, link: Proxy) -> Settings:
    """Settings that reach RabbitMQ through ``link``, with short broker timeouts."""
    return replace(settings, amqp_url=link.url, publish_timeout_seconds=TIMEOUT)


async def ends_within(seconds: float, call: asyncio.Future[Any]) -> None:
    """Fails unless ``call`` ends (returning or raising) within ``seconds``."""
    done, _ = await asyncio.wait([call], timeout=seconds)
    assert done, f"still waiting after {seconds}s"


async def test_a_scheduler_tick_ends_in_time_while_the_broker_is_silent(
    store: JobStore,
    broker: Broker,
    engine: AsyncEngine,
    through: Settings,
    link: Proxy,
    tracer_provider: TracerProvider,
) -> None:
    # Given a queued job whose confirmed ticket is old, so the tick asks RabbitMQ about its queue
    await submit(store, broker, new_job())
    stale = replace(through, lost_ticket_after_seconds=0.1)
    await asyncio.sleep(0.2)
    silent = Broker(stale, "jobq-test-scheduler")
    await silent.connect()
    scheduler = Scheduler(
        stale, SweepStore(engine), Outbox(TicketStore(engine), silent, mark_delay=0), silent,
        tracer_provider.get_tracer("s"),
    )  # fmt: skip
    try:
        # When RabbitMQ goes silent, then the tick gives up on it within its timeout
        link.blackhole()
        tick = asyncio.ensure_future(scheduler.tick())
        await ends_within(4 * TIMEOUT, tick)
        assert isinstance(tick.exception(), TimeoutError)
    finally:
        link.pass_through()
        await silent.close()


async def test_declaring_a_queue_gives_up_in_time_while_the_broker_is_silent(
    through: Settings, link: Proxy
) -> None:
    """As ``POST /v1/admin/queues`` and the scheduler's redeclare of a deleted queue do."""
    silent = Broker(through, "jobq-test-admin")
    await silent.connect()
    try:
        link.blackhole()
        declare = asyncio.ensure_future(silent.ensure_queue("default", redeclare=True))
        await ends_within(4 * TIMEOUT, declare)
        assert isinstance(declare.exception(), TimeoutError)
    finally:
        link.pass_through()
        await silent.close()


async def test_a_worker_stops_in_time_while_the_broker_is_silent(
    start_worker: StartWorker, through: Settings, link: Proxy
) -> None:
    running = await start_worker(amqp_url=through.amqp_url, publish_timeout_seconds=TIMEOUT)
    link.blackhole()
    running.stop.set()
    await ends_within(4 * TIMEOUT, running.task)
    assert running.task.exception() is None
    link.pass_through()
    await running.broker.close()
