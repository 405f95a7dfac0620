"""A worker whose loop is stuck fails its liveness probe, and passes it again once the loop
comes round; readiness says why not."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from shared.config import Settings
from shared.db.engine import make_engine
from tests.chaos.cluster import Cluster, own_cluster
from tests.conftest import TEST_SECRET, client_bearer

pytestmark = pytest.mark.e2e


@pytest.fixture
async def cluster(database_url: str, amqp_url: str, tmp_path: Path) -> AsyncIterator[Cluster]:
    overrides = {
        "JOBQ_HANDLERS": "tests.e2e.stuck_handlers", "JOBQ_LIVENESS_DEADLINE_SECONDS": "1",
    }  # fmt: skip
    async with own_cluster(
        database_url, amqp_url, "liveness", tmp_path, TEST_SECRET, overrides
    ) as c:
        yield c


async def test_a_worker_whose_loop_is_stuck_fails_liveness_until_it_comes_round(
    cluster: Cluster,
) -> None:
    await cluster.up(workers=1, schedulers=0)
    port = next(p for name, p in cluster.metrics_ports.items() if name.startswith("worker"))
    engine = make_engine(Settings(database_url=cluster.database_url), "tests", pool_size=1)
    try:
        h = await client_bearer(engine, Settings(jwt_secret=TEST_SECRET), "acme")
    finally:
        await engine.dispose()
    async with httpx.AsyncClient(timeout=10) as http:
        assert (await http.get(f"http://127.0.0.1:{port}/health")).status_code == 200
        r = await http.post(
            f"{cluster.url}/v1/jobs", json={"type": "stuck.block", "payload": 3}, headers=h
        )
        assert r.status_code == 202, r.text
        seen = []
        for _ in range(100):  # the probe waits for the blocked loop, then hears it is late
            answer = await http.get(f"http://127.0.0.1:{port}/health")
            seen.append(answer.status_code)
            if 503 in seen and answer.status_code == 200:
                break
            await asyncio.sleep(0.2)
    assert 503 in seen, seen
    assert seen[-1] == 200, seen
