"""The cron path under faults: two schedulers fire an every-second schedule while one of them
is killed with kill -9 again and again, just after a tick comes due (when a scheduler is most
likely inside the firing transaction). Every tick of the window must have exactly one fire and
one job, and every job must have run once (docs/design.md §9). PostgreSQL and RabbitMQ are
left alone."""

from __future__ import annotations

import asyncio
import secrets
import signal
import time
from datetime import timedelta
from pathlib import Path

import asyncpg
import httpx
import pytest

from shared.config import Settings
from shared.db.engine import make_engine
from tests.chaos.cluster import Cluster
from tests.chaos.harness import chaos_database
from tests.conftest import TEST_SECRET, client_bearer
from tests.services import delete_broker_objects, dsn

pytestmark = pytest.mark.chaos

KILLS = 8


async def test_schedulers_killed_at_the_tick_fire_each_tick_once(
    database_url: str, amqp_url: str, tmp_path: Path
) -> None:
    prefix = f"jobqcron{secrets.token_hex(3)}"
    async with chaos_database(database_url) as url:
        cluster = Cluster(url, amqp_url, prefix, TEST_SECRET, tmp_path)
        engine = make_engine(Settings(database_url=url), "tests", pool_size=1)
        try:
            headers = await client_bearer(engine, Settings(jwt_secret=TEST_SECRET), "cron")
            await cluster.up(workers=1, schedulers=2)
            async with httpx.AsyncClient(base_url=cluster.url, headers=headers) as api:
                made = await api.post("/v1/schedules", json={
                    "name": "every-second", "cron": "* * * * * *", "catch_up": 10,
                    "job": {"type": "chaos.work", "payload": {"ms": 20}},
                })  # fmt: skip
                assert made.status_code == 201, made.text
                schedule, first = made.json()["id"], made.json()["next_fire_at"]
                for _ in range(KILLS):
                    # Just after a tick is due: the schedulers tick every 0.25 s.
                    await asyncio.sleep(1.02 - time.time() % 1 + 0.05 * secrets.randbelow(4))
                    victim = cluster.of("scheduler")[0]
                    cluster.signal(victim, signal.SIGKILL)
                    await cluster.start("scheduler")
                stopped = await api.patch(f"/v1/schedules/{schedule}", json={"paused": True})
                assert stopped.status_code == 200, stopped.text
                assert stopped.json()["skipped_ticks"] == 0
            conn = await asyncpg.connect(dsn(url))
            try:
                for _ in range(300):  # every job it made has finished
                    if not await conn.fetchval(
                        "SELECT count(*) FROM jobs WHERE status NOT IN ('succeeded', 'dead')"
                    ):
                        break
                    await asyncio.sleep(0.1)
                fires = await conn.fetch(
                    "SELECT tick, job_id, outcome FROM schedule_fires WHERE schedule_id = $1"
                    " ORDER BY tick", schedule,
                )  # fmt: skip
                jobs = await conn.fetch(
                    "SELECT j.id, j.idempotency_key, j.status, j.attempts,"
                    " (SELECT count(*) FROM chaos_executions e WHERE e.job_id = j.id) AS runs,"
                    " (SELECT count(*) FROM chaos_effects e WHERE e.job_id = j.id AND applied)"
                    " AS effects FROM jobs j"
                )
            finally:
                await conn.close()
        finally:
            await asyncio.to_thread(cluster.stop)
            await engine.dispose()
            await delete_broker_objects(amqp_url, prefix, ("default",))

    ticks = [f["tick"] for f in fires]
    assert len(ticks) >= KILLS, cluster.logs()
    # None missing: one fire for every second from the schedule's first tick to the last.
    assert f"{ticks[0]:%Y-%m-%dT%H:%M:%SZ}" == first
    assert ticks == [ticks[0] + timedelta(seconds=i) for i in range(len(ticks))]
    assert {f["outcome"] for f in fires} == {"fired"}
    # None twice: one job per fire, each the job its fire names, each run once.
    assert sorted(j["id"] for j in jobs) == sorted(f["job_id"] for f in fires)
    keys = {f"schedule:{schedule}:{t:%Y-%m-%dT%H:%M:%SZ}" for t in ticks}
    assert {j["idempotency_key"] for j in jobs} == keys
    assert {(j["status"], j["attempts"], j["runs"], j["effects"]) for j in jobs} == {
        ("succeeded", 1, 1, 1)
    }
    print(f"\ncron under kill -9: {KILLS} schedulers killed, {len(ticks)} ticks, one job each")
