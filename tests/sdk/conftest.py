"""The SDK against the real API: a database of its own, the api, a worker and the scheduler
started as processes (as ``jobq up`` would), and real clients registered in it."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest
from jobq import Credentials
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.config import Settings
from shared.db.clients import ClientStore
from shared.db.engine import make_engine
from tests.chaos.cluster import own_cluster
from tests.conftest import TEST_SECRET

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
    log_dir: Path = tmp_path_factory.mktemp("sdk")
    async with own_cluster(database_url, amqp_url, "sdk", log_dir, TEST_SECRET) as cluster:
        engine = make_engine(Settings(database_url=cluster.database_url), "tests", pool_size=2)
        try:
            await cluster.up(workers=1, schedulers=1)
            yield Live(cluster.url, engine)
        finally:
            await engine.dispose()
