"""What every service process does around its main loop: signals, dependency checks."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import aio_pika
import aiormq
import sqlalchemy as sa

from shared.db.diagnose import database_problem, redact
from shared.db.engine import make_engine
from shared.db.migrate import behind
from shared.db.queues import QueueStore
from shared.errors import DependencyUnavailable, TopologyMismatch
from shared.messaging import Broker

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer
    from sqlalchemy.ext.asyncio import AsyncEngine

    from shared.config import Settings


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT, for a graceful stop."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def check_database(engine: AsyncEngine, settings: Settings) -> None:
    """Fail with one clear line if PostgreSQL cannot be reached or lacks migrations."""
    try:
        async with engine.connect() as conn:
            revision = None
            if await conn.scalar(sa.text("SELECT to_regclass('alembic_version') IS NOT NULL")):
                revision = await conn.scalar(sa.text("SELECT version_num FROM alembic_version"))
    except Exception as exc:
        problem = database_problem(exc, settings.database_url)
        if problem is None:
            raise
        raise DependencyUnavailable(problem) from None
    if revision is None:
        raise DependencyUnavailable("the jobq database has no tables yet: run `jobq migrate`")
    if behind(revision):
        raise DependencyUnavailable(
            f"the jobq database is at migration {revision}, older than this jobq: run"
            " `jobq migrate`"
        )


async def connect_broker(
    settings: Settings, name: str, tracer: Tracer | None = None, declare: bool = True
) -> Broker:
    """A connected broker (its topology declared, unless ``declare`` is off), or one clear line
    saying why not."""
    broker = Broker(settings, name, tracer)
    aiormq_log = logging.getLogger("aiormq")
    level = aiormq_log.level
    aiormq_log.setLevel(logging.CRITICAL)  # its own "error when creating transport" line
    try:
        await broker.connect(declare)
    except TopologyMismatch:
        await broker.close()
        raise
    except (
        OSError,
        TimeoutError,
        aiormq.exceptions.AMQPError,
        aio_pika.exceptions.AMQPException,
    ) as exc:
        await broker.close()
        raise DependencyUnavailable(broker_problem(exc, settings.amqp_url)) from None
    finally:
        aiormq_log.setLevel(level)
    return broker


def broker_problem(exc: BaseException, url: str) -> str:
    """The one line for a broker that did not let jobq connect."""
    where = f"RabbitMQ at {redact(url)}"
    if isinstance(
        exc, aiormq.exceptions.AuthenticationError | aiormq.exceptions.ProbableAuthenticationError
    ):
        return (
            f"{where} refused the login (ACCESS_REFUSED): set JOBQ_AMQP_URL to a user it accepts"
            " (rabbitmqctl add_user jobq PASSWORD; rabbitmqctl set_permissions -p / jobq"
            " '.*' '.*' '.*'); 'guest' may log in from localhost only"
        )
    if isinstance(
        exc, aiormq.exceptions.InvalidFrameError | aiormq.exceptions.ConnectionNotAllowed
    ):
        return (
            f"{where} refused the virtual host (missing, or no permission on it): create it"
            " (rabbitmqctl add_vhost NAME; rabbitmqctl set_permissions -p NAME USER '.*' '.*'"
            " '.*') or fix JOBQ_AMQP_URL"
        )
    return (
        f"{where} is unreachable ({type(exc).__name__}); start it (rabbitmq-server -detached)"
        " or set JOBQ_AMQP_URL"
    )


async def dependencies_ready(engine: AsyncEngine, broker: Broker, within: float) -> str | None:
    """``None`` when PostgreSQL answers a query and the broker connection is open; else why
    not, in one line (a service's ``/health/ready``)."""
    if not broker.connected:
        return "RabbitMQ: not connected (reconnecting)"
    try:
        async with asyncio.timeout(within), engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))
    except Exception as exc:
        return f"PostgreSQL: {type(exc).__name__}"
    return None


@asynccontextmanager
async def service_resources(
    settings: Settings, name: str, tracer: Tracer | None, pool_size: int | None = None
) -> AsyncIterator[tuple[AsyncEngine, Broker]]:
    """The engine and broker a service runs on, checked before use and closed after; the
    queues the settings name (``JOBQ_QUEUES`` and ``default``) are declared."""
    engine = make_engine(settings, name, pool_size)
    try:
        await check_database(engine, settings)
        broker = await connect_broker(settings, f"jobq-{name}", tracer)
        try:
            await QueueStore(engine).declare(settings.declared_queues)
            for queue in settings.declared_queues:
                await broker.ensure_queue(queue)
            yield engine, broker
        finally:
            await broker.close()
    finally:
        await engine.dispose()
