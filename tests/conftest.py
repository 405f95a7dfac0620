"""Fixtures shared by the integration and end-to-end tests.

Each test session gets its own database (``jobq_test_<random>``, created and migrated once,
dropped at the end) and its own broker prefix (every exchange and queue it declares starts with
it, and is deleted at the end). Tests start from empty tables and queues.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import replace
from typing import Protocol

import aio_pika
import aiormq
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from services.api.app import token_config
from services.api.tokens import Principal, issue
from shared.config import Settings
from shared.credentials import credential_digest
from shared.db.clients import ClientStore
from shared.db.engine import make_engine
from shared.db.jobs import JobStore
from shared.db.leases import LeaseStore
from shared.db.sql import JobRow
from shared.db.submits import SubmitStore
from shared.messaging import Broker
from tests.services import (
    broker_server,
    create_database,
    database_server,
    delete_broker_objects,
    drop_database,
)

TEST_SECRET = "test-secret-" + "x" * 40


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A fresh, migrated database for this session."""
    with database_server() as server:
        url = asyncio.run(create_database(server, "jobq_test"))
        try:
            yield url
        finally:
            asyncio.run(drop_database(url))


@pytest.fixture(scope="session")
def amqp_url() -> Iterator[str]:
    with broker_server() as url:
        yield url


@pytest.fixture(scope="session")
def broker_prefix(amqp_url: str) -> Iterator[str]:
    """This session's prefix; its exchanges and queues are deleted at the end."""
    prefix = f"jobqtest{secrets.token_hex(3)}"
    yield prefix

    asyncio.run(delete_broker_objects(amqp_url, prefix, (*KNOWN_QUEUES, *DECLARED_BY_TESTS)))


#: Job queues tests use (so the session cleanup can delete them).
KNOWN_QUEUES = ("default", "other", "email", "slow")
#: Declared by tests (deleted with the session's other broker objects).
DECLARED_BY_TESTS = ("reports", "watched", "racing", "going", "alpha", "beta")


@pytest.fixture(scope="session")
def base_settings(database_url: str, amqp_url: str, broker_prefix: str) -> Settings:
    """Settings for in-process services: short leases and intervals so tests stay fast."""
    return Settings(
        database_url=database_url,
        amqp_url=amqp_url,
        broker_prefix=broker_prefix,
        jwt_secret=TEST_SECRET,
        lease_seconds=3.0,
        republish_after_seconds=2.0,
        lost_ticket_after_seconds=3.0,
        scheduler_interval_seconds=0.2,
        shutdown_grace_seconds=3.0,
        retry_backoff_seconds=0.2,
        retry_backoff_max_seconds=0.5,
        worker_concurrency=8,
        management_url="",
        log_format="text",
    )


@pytest.fixture
def settings(base_settings: Settings) -> Settings:
    return replace(base_settings)


@pytest.fixture(scope="session")
async def engine(base_settings: Settings) -> AsyncIterator[AsyncEngine]:
    eng = make_engine(base_settings, "tests", pool_size=5)
    yield eng
    await eng.dispose()


@pytest.fixture
async def clean(engine: AsyncEngine, amqp_url: str, broker_prefix: str) -> None:
    """Empty tables and queues before a test; the queues tests use are declared."""
    async with engine.begin() as conn:
        await conn.execute(
            sa.text(
                "TRUNCATE jobs, api_clients, queues, job_types, dead_letter_actions, dead_letter_replays"
            )
        )
        await conn.execute(
            sa.text("INSERT INTO queues (name) SELECT unnest(CAST(:names AS text[]))"),
            {"names": list(KNOWN_QUEUES)},
        )
    conn_ = await aio_pika.connect(amqp_url)
    try:
        ch = await conn_.channel()
        for q in ("dead", *(f"q.{name}" for name in KNOWN_QUEUES)):
            try:
                await (await ch.get_underlay_channel()).queue_purge(f"{broker_prefix}.{q}")
            except aiormq.exceptions.ChannelNotFoundEntity:
                ch = await conn_.channel()  # the queue does not exist yet
    finally:
        await conn_.close()


@pytest.fixture
async def store(engine: AsyncEngine, clean: None) -> JobStore:
    return JobStore(engine)


@pytest.fixture
async def submits(engine: AsyncEngine, clean: None) -> SubmitStore:
    return SubmitStore(engine)


@pytest.fixture
async def leases(engine: AsyncEngine, clean: None) -> LeaseStore:
    return LeaseStore(engine)


@pytest.fixture
async def broker(settings: Settings) -> AsyncIterator[Broker]:
    b = Broker(settings, "jobq-tests")
    await b.connect()
    yield b
    await b.close()


async def client_bearer(
    engine: AsyncEngine,
    settings: Settings,
    tenant: str,
    scopes: Iterable[str] = ("jobs:write", "jobs:read"),
) -> dict[str, str]:
    """The ``Authorization`` header of a new, real API client (a row in ``api_clients``)."""
    client, _ = await ClientStore(engine).register(f"test-{tenant}", tenant, list(scopes))
    principal = Principal(
        str(client.id), tenant, frozenset(scopes), credential=credential_digest(client.secret_hash)
    )
    return {"Authorization": f"Bearer {issue(token_config(settings), principal)}"}


async def jobs_of(store: JobStore, tenant: str) -> list[JobRow]:
    """The tenant's newest jobs (a page of 500 at most)."""
    page, _ = await store.list(tenant, limit=500, max_bytes=2**40)
    return list(page)


class Bearer(Protocol):
    async def __call__(
        self,
        tenant: str = "acme",
        scopes: Iterable[str] = ("jobs:write", "jobs:read"),
        signed_by: Settings | None = None,
    ) -> dict[str, str]: ...


@pytest.fixture
def bearer(engine: AsyncEngine, settings: Settings, clean: None) -> Bearer:
    """Makes a client of ``tenant`` with ``scopes`` and a token for it (signed as ``signed_by``
    says, by default as the API under test verifies)."""

    async def make(
        tenant: str = "acme",
        scopes: Iterable[str] = ("jobs:write", "jobs:read"),
        signed_by: Settings | None = None,
    ) -> dict[str, str]:
        return await client_bearer(engine, signed_by or settings, tenant, scopes)

    return make


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Fault tests last: they restart PostgreSQL and RabbitMQ under everyone's connections."""
    items.sort(key=lambda item: item.get_closest_marker("chaos") is not None)
