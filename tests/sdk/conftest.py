"""The SDK against the real API: a database of its own, the api, a worker and the scheduler
started as processes (as ``jobq up`` would), and real clients registered in it."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from jobq import Credentials
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.config import Settings
from shared.db.clients import ClientStore
from shared.db.engine import make_engine
from tests.chaos.cluster import Cluster
from tests.conftest import TEST_SECRET
from tests.services import create_database, delete_broker_objects, drop_database

pytestmark = pytest.mark.e2e


@dataclass
class Live:
    url: str
    engine: AsyncEngine

    async def credentials(
        self, tenant: str | None = None, scopes: Iterable[str] = ("jobs:write", "jobs:read")
    ) -> Credentials:
        """A new client with ``scopes`` (a row in ``api_clients``), of a tenant of its own
        unless ``tenant`` is given: the tests share one database."""
        tenant = tenant or f"t{secrets.token_hex(4)}"
        client, secret = await ClientStore(self.engine).register("sdk-test", tenant, list(scopes))
        return Credentials(self.url, str(client.id), secret)


@pytest.fixture(scope="module")
async def live(
    database_url: str, amqp_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Live]:
    url = await create_database(database_url, "jobq_sdk")
    prefix = f"jobqsdk{secrets.token_hex(3)}"
    log_dir: Path = tmp_path_factory.mktemp("sdk")
    cluster = Cluster(url, amqp_url, prefix, TEST_SECRET, log_dir)
    engine = make_engine(Settings(database_url=url), "tests", pool_size=2)
    try:
        await cluster.up(workers=1, schedulers=1)
        yield Live(cluster.url, engine)
    finally:
        await asyncio.to_thread(cluster.stop)
        async with engine.connect() as conn:  # the tests declare queues of their own
            queues = list((await conn.execute(sa.text("SELECT name FROM queues"))).scalars())
        await engine.dispose()
        await drop_database(url)
        await delete_broker_objects(amqp_url, prefix, queues)
