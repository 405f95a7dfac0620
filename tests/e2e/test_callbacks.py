"""Result callbacks through the real processes: an api, a worker and two schedulers on a
database of their own deliver each finished job once, signed as the README's function
verifies, to a receiver on 127.0.0.1 (``JOBQ_WEBHOOK_ALLOW`` names loopback)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import asyncpg
import httpx
import pytest

from shared.config import Settings
from shared.db.clients import ClientStore
from shared.db.engine import make_engine
from tests.chaos.cluster import own_cluster
from tests.conftest import TEST_SECRET
from tests.integration.test_callbacks import readme_verifier
from tests.integration.test_webhook import answer
from tests.integration.test_webhook import serving as receiving
from tests.services import dsn

pytestmark = pytest.mark.e2e


async def test_two_schedulers_deliver_each_finished_job_once(
    database_url: str, amqp_url: str, tmp_path: Path
) -> None:
    overrides = {"JOBQ_WEBHOOK_ALLOW": "127.0.0.0/8"}
    async with (
        own_cluster(
            database_url, amqp_url, "callbacks", tmp_path, TEST_SECRET, overrides
        ) as cluster,
        receiving(answer(200, b"ok")) as receiver,
    ):
        await cluster.up(workers=1, schedulers=2)
        engine = make_engine(Settings(database_url=cluster.database_url), "tests", pool_size=1)
        try:
            client, secret = await ClientStore(engine).register("shop", "acme", ["jobs:write"])
        finally:
            await engine.dispose()
        async with httpx.AsyncClient(base_url=cluster.url, timeout=10) as http:
            token = await http.post(
                "/v1/auth/token", data={"grant_type": "client_credentials"},
                auth=(str(client.id), secret),
            )  # fmt: skip
            h = {"Authorization": f"Bearer {token.json()['access_token']}"}
            jobs = [{"type": "echo", "payload": {"i": i}, "callback_url": receiver.url(f"/{i}")}
                    for i in range(10)]  # fmt: skip
            submitted = await http.post("/v1/jobs/batch", json={"jobs": jobs}, headers=h)
            assert submitted.status_code == 202, submitted.text
            ids = {j["id"] for j in submitted.json()["items"]}
        conn = await asyncpg.connect(dsn(cluster.database_url))
        try:
            for _ in range(300):
                delivered = await conn.fetchval(
                    "SELECT count(*) FROM callback_deliveries WHERE outcome = 'delivered'"
                )
                if delivered == 10:
                    break
                await asyncio.sleep(0.1)
            assert delivered == 10, cluster.logs()
            assert await conn.fetchval("SELECT count(*) FROM callback_deliveries") == 10
        finally:
            await conn.close()
    verify = readme_verifier()
    assert len(receiver.requests) == 10
    assert {json.loads(r.body)["id"] for r in receiver.requests} == ids
    for r in receiver.requests:
        body = json.loads(r.body)
        assert (r.path, body["status"]) == (f"/{body['result']['i']}", "succeeded")
        assert verify(client.callback_secret, r.headers["x-jobq-signature"], r.body)
