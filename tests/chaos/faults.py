"""What breaks RabbitMQ and PostgreSQL. Every fault that stops or reconfigures a service is a
context manager that restores it on the way out, also when the test fails."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import aio_pika
import asyncpg


def utcnow() -> datetime:
    return datetime.now(UTC)


def run(*argv: str, timeout: float = 120) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=True)
    return done.stdout.strip()


async def rabbitmqctl(*args: str) -> str:
    return await asyncio.to_thread(run, "rabbitmqctl", "-q", *args)


async def rabbit_eval(expr: str) -> str:
    return await rabbitmqctl("eval", expr)


@asynccontextmanager
async def rabbit_stopped() -> AsyncIterator[None]:
    """The RabbitMQ application stopped (the node stays up), then started again."""
    await rabbitmqctl("stop_app")
    try:
        yield
    finally:
        await rabbitmqctl("start_app")
        await rabbitmqctl("await_startup", "--timeout", "120")


@asynccontextmanager
async def rabbit_setting(key: str, value: int) -> AsyncIterator[None]:
    """A ``rabbit`` application setting changed at runtime (read by channels opened after)."""
    before = await rabbit_eval(f"application:get_env(rabbit, {key}).")
    await rabbit_eval(f"application:set_env(rabbit, {key}, {value}).")
    try:
        yield
    finally:
        if before == "undefined":
            await rabbit_eval(f"application:unset_env(rabbit, {key}).")
        else:  # {ok,Value}
            original = before.removeprefix("{ok,").removesuffix("}")
            await rabbit_eval(f"application:set_env(rabbit, {key}, {original}).")


@asynccontextmanager
async def publishers_blocked() -> AsyncIterator[None]:
    """A memory alarm: RabbitMQ blocks every connection that publishes until it clears."""
    before = await rabbit_eval("vm_memory_monitor:get_vm_memory_high_watermark().")
    await rabbitmqctl("set_vm_memory_high_watermark", "0")
    try:
        yield
    finally:
        await rabbitmqctl("set_vm_memory_high_watermark", before if before[0].isdigit() else "0.4")


def pg_cluster() -> tuple[str, str]:
    """(version, cluster name) of the local PostgreSQL (``pg_ctlcluster`` arguments)."""
    return sorted(p.name for p in Path("/etc/postgresql").iterdir())[-1], "main"


def pg_ready() -> bool:
    return subprocess.run(["pg_isready", "-q", "-h", "127.0.0.1"], check=False).returncode == 0


@asynccontextmanager
async def postgres_down() -> AsyncIterator[None]:
    """PostgreSQL stopped with ``-m immediate`` (a crash: no checkpoint, clients cut off), then
    started again; the caller decides how long it stays down."""
    version, name = pg_cluster()
    ctl = ["pg_ctlcluster", "--skip-systemctl-redirect", version, name]
    await asyncio.to_thread(run, *ctl, "stop", "-m", "immediate")
    try:
        yield
    finally:
        await asyncio.to_thread(run, *ctl, "start")
        for _ in range(600):
            if await asyncio.to_thread(pg_ready):
                break
            await asyncio.sleep(0.1)


async def terminate_backends(admin_url: str, database: str) -> int:
    """``pg_terminate_backend`` on every jobq connection to ``database``; how many it cut."""
    conn = await asyncpg.connect(admin_url)
    try:
        return int(
            await conn.fetchval(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = $1 AND application_name LIKE 'jobq-%'",
                database,
            )
        )
    finally:
        await conn.close()


class UnackedConsumer:
    """A consumer that never acks, on its own queue: the broker must close its channel once
    ``consumer_timeout`` passes, which proves the timeout is in force."""

    def __init__(self, connection: aio_pika.abc.AbstractConnection) -> None:
        self.connection = connection
        self.closed = asyncio.Event()

    async def closed_within(self, seconds: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.closed.wait(), seconds)
        return self.closed.is_set()

    async def close(self) -> None:
        await self.connection.close()


async def unacked_consumer(amqp_url: str, prefix: str) -> UnackedConsumer:
    conn = await aio_pika.connect(amqp_url)
    consumer = UnackedConsumer(conn)
    channel = await conn.channel()
    channel.close_callbacks.add(lambda *_: consumer.closed.set())
    queue = await channel.declare_queue(f"{prefix}.q.control", durable=True)
    await channel.default_exchange.publish(aio_pika.Message(b"hold me"), routing_key=queue.name)

    async def hold(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        """Never acked."""

    await queue.consume(hold)
    return consumer
