"""Where the tests find PostgreSQL and RabbitMQ: the environment, else testcontainers when a
Docker engine answers, else the local services on 127.0.0.1."""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import asyncpg

from shared.config import Settings
from shared.db.migrate import upgrade

LOCAL_DATABASE_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
LOCAL_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"


def docker_engine_reachable() -> bool:
    """Probe the engine's socket ourselves: docker-py leaks a socket when it is absent."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        if host.startswith("unix://"):
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(1)
                s.connect(host.removeprefix("unix://"))
        else:
            parts = urlsplit(host)
            with socket.create_connection((parts.hostname or "", parts.port or 2375), timeout=1):
                pass
    except OSError:
        return False
    return True


@contextmanager
def database_server() -> Iterator[str]:
    """A PostgreSQL server URL (any database on it; tests create their own)."""
    if url := os.environ.get("JOBQ_TEST_DATABASE_URL"):
        yield url
    elif docker_engine_reachable():
        from testcontainers.community.postgres import PostgresContainer

        with PostgresContainer("postgres:15-alpine", driver="asyncpg") as pg:
            yield pg.get_connection_url()
    else:
        yield LOCAL_DATABASE_URL


@contextmanager
def broker_server() -> Iterator[str]:
    """A RabbitMQ URL; tests isolate themselves with a broker prefix."""
    if url := os.environ.get("JOBQ_TEST_AMQP_URL"):
        yield url
    elif docker_engine_reachable():
        from testcontainers.core.container import DockerContainer
        from testcontainers.core.waiting_utils import wait_for_logs

        with DockerContainer("rabbitmq:3.10-management").with_exposed_ports(5672) as rmq:
            wait_for_logs(rmq, "Server startup complete", timeout=120)
            port = rmq.get_exposed_port(5672)
            yield f"amqp://guest:guest@{rmq.get_container_host_ip()}:{port}/"
    else:
        yield LOCAL_AMQP_URL


def dsn(url: str) -> str:
    """A SQLAlchemy database URL as asyncpg spells it."""
    return Settings(database_url=url).sync_database_url


async def _on_server(url: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn(urlunsplit(urlsplit(url)._replace(path="/postgres"))))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def create_database(server_url: str, prefix: str, revision: str = "head") -> str:
    """A new database ``<prefix>_<random>`` on the server, migrated to ``revision``; returns
    its URL."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    await _on_server(server_url, f'CREATE DATABASE "{name}"')
    url = urlunsplit(urlsplit(server_url)._replace(path=f"/{name}"))
    await upgrade(Settings(database_url=url), revision)
    return url


async def drop_database(url: str) -> None:
    name = urlsplit(url).path.lstrip("/")
    await _on_server(url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def delete_broker_objects(amqp_url: str, prefix: str, queues: Iterable[str]) -> None:
    """What a run declared under ``prefix``: the dead-letter queue, the named job queues, and
    both exchanges."""
    conn = await aio_pika.connect(amqp_url)
    try:
        ch = await conn.channel()
        for queue in ("dead", *(f"q.{name}" for name in queues)):
            await ch.queue_delete(f"{prefix}.{queue}")
        for exchange in ("jobs", "dlx"):
            await ch.exchange_delete(f"{prefix}.{exchange}")
    finally:
        await conn.close()
