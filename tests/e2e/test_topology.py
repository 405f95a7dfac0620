"""A setting RabbitMQ cannot change in place (a queue's delivery limit, the dead-letter
queue's bound) is refused with one line naming the fix, and ``jobq broker redeclare`` is that
fix: the queue is recreated and no job is lost."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aio_pika
import asyncpg
import pytest

from tests.chaos.cluster import Cluster, own_cluster
from tests.conftest import TEST_SECRET
from tests.procs import clean_env
from tests.services import dsn

pytestmark = pytest.mark.e2e


class Setup:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    def jobq(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "services", *args], env=clean_env({**self.cluster.env, **env}),
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip


@pytest.fixture
async def setup(database_url: str, amqp_url: str, tmp_path: Path) -> AsyncIterator[Setup]:
    async with own_cluster(database_url, amqp_url, "topology", tmp_path, TEST_SECRET) as c:
        yield Setup(c)


async def test_a_changed_delivery_limit_is_refused_then_redeclared_without_losing_jobs(
    setup: Setup,
) -> None:
    c = setup.cluster
    await c.up(workers=0, schedulers=1)  # declares jobq.q.default with the default limit (10)
    conn = await asyncpg.connect(dsn(c.database_url))
    try:
        job = await conn.fetchval(
            "INSERT INTO jobs (id, tenant, type, queue, payload, priority, status, max_attempts,"
            " timeout_seconds, run_at, dispatched_at, published_at) VALUES (gen_random_uuid(),"
            " 'acme', 'noop', 'default', 'null', 5, 'queued', 3, 60, now(), now(), now())"
            " RETURNING id"
        )  # a queued job whose ticket was confirmed: recreating its queue drops the ticket

        refused = setup.jobq("worker", JOBQ_DELIVERY_LIMIT="5")
        assert refused.returncode == 2, refused.stderr
        assert refused.stderr.count("\n") == 1, refused.stderr
        assert "x-delivery-limit" in refused.stderr
        assert "jobq broker redeclare default" in refused.stderr

        done = setup.jobq("broker", "redeclare", JOBQ_DELIVERY_LIMIT="5")
        assert done.returncode == 0, done.stderr
        assert "1 queued jobs published again" in done.stdout, done.stdout

        c.overrides["JOBQ_DELIVERY_LIMIT"] = "5"
        await c.start("worker")
        for _ in range(150):  # the scheduler publishes its ticket again; the worker runs it
            if await conn.fetchval("SELECT status FROM jobs WHERE id = $1", job) == "succeeded":
                break
            await asyncio.sleep(0.1)
        assert await conn.fetchval("SELECT status FROM jobs WHERE id = $1", job) == "succeeded"
    finally:
        await conn.close()


async def test_a_dead_letter_bound_is_applied_by_recreating_the_queue(setup: Setup) -> None:
    c = setup.cluster
    await c.up(workers=0, schedulers=0)  # declares jobq.dead unbounded
    connection = await aio_pika.connect(c.amqp_url)
    async with connection:
        channel = await connection.channel()
        dlx = await channel.get_exchange(f"{c.prefix}.dlx")
        for i in range(3):
            await dlx.publish(aio_pika.Message(f"dead {i}".encode()), routing_key="")

        refused = setup.jobq("scheduler", JOBQ_DEAD_LETTER_MAX_LENGTH="2")
        assert refused.returncode == 2
        assert "x-max-length" in refused.stderr
        assert "jobq broker redeclare --dead-letters" in refused.stderr
        asks = setup.jobq("broker", "redeclare", "--dead-letters", JOBQ_DEAD_LETTER_MAX_LENGTH="2")
        assert asks.returncode == 2
        assert "holds 3 messages" in asks.stderr
        done = setup.jobq(
            "broker", "redeclare", "--dead-letters", "--yes", JOBQ_DEAD_LETTER_MAX_LENGTH="2"
        )
        assert done.returncode == 0, done.stderr
        for i in range(3, 6):
            await dlx.publish(aio_pika.Message(f"dead {i}".encode()), routing_key="")
        dead = await channel.get_queue(f"{c.prefix}.dead", ensure=False)
        kept = []
        while (m := await dead.get(no_ack=True, fail=False)) is not None:
            kept.append(m.body.decode())
    assert kept == ["dead 4", "dead 5"]  # the newest two: past the bound the oldest go
