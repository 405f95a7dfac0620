"""A real Prometheus (Debian's ``prometheus``) scrapes the real api, worker and scheduler; after
a known workload, what its query API says matches the database."""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import asyncpg
import httpx
import jobq
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shared.config import Settings
from shared.db.clients import ClientStore
from shared.db.engine import make_engine
from tests.chaos.cluster import Cluster, own_cluster
from tests.conftest import TEST_SECRET
from tests.procs import free_port
from tests.services import dsn

pytestmark = pytest.mark.e2e

T = TypeVar("T")
PROMETHEUS = shutil.which("prometheus")


async def until(read: Callable[[], Awaitable[T]], holds: Callable[[T], bool], within: float) -> T:
    deadline = asyncio.get_running_loop().time() + within
    while not holds(value := await read()):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"still {value!r} after {within} s")
        await asyncio.sleep(0.25)
    return value


class Prometheus:
    def __init__(self, url: str) -> None:
        self.http = httpx.AsyncClient(base_url=url, timeout=5)

    async def query(self, expr: str) -> dict[str, float]:
        """``{label values joined by ',': value}`` of an instant query."""
        r = await self.http.get("/api/v1/query", params={"query": expr})
        r.raise_for_status()
        out = {}
        for item in r.json()["data"]["result"]:
            labels = ",".join(f"{k}={v}" for k, v in sorted(item["metric"].items()))
            out[labels] = float(item["value"][1])
        return out

    async def targets_up(self) -> int:
        try:
            return int(sum((await self.query("up == 1")).values()))
        except httpx.HTTPError:  # not listening yet
            return 0

    async def one(self, expr: str) -> float | None:
        found = await self.query(expr)
        return next(iter(found.values())) if len(found) == 1 else None


@pytest.fixture
async def system(
    database_url: str, amqp_url: str, tmp_path: Path
) -> AsyncIterator[tuple[Cluster, Prometheus, str]]:
    if PROMETHEUS is None:
        message = "prometheus is not installed (apt-get install prometheus; .ci/run does)"
        (pytest.fail if os.environ.get("CI") else pytest.skip)(message)
    overrides = {
        # Two api processes behind one port: a scrape reaching either must count both.
        "JOBQ_QUEUES": "parked", "JOBQ_WORKER_CONCURRENCY": "4", "JOBQ_API_PROCESSES": "2",
        "JOBQ_RETRY_BACKOFF_SECONDS": "3600", "JOBQ_RETRY_BACKOFF_MAX_SECONDS": "3600",
    }  # fmt: skip
    async with own_cluster(
        database_url, amqp_url, "prom", tmp_path, TEST_SECRET, overrides
    ) as cluster:
        await cluster.up(workers=1, schedulers=1)
        targets = [
            f"127.0.0.1:{cluster.port}",
            *(f"127.0.0.1:{port}" for port in cluster.metrics_ports.values()),
        ]
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            f"  - job_name: jobq\n    static_configs: [{{targets: {targets}}}]\n"
        )
        web = f"127.0.0.1:{free_port()}"
        with (tmp_path / "prometheus.log").open("wb") as log:
            prom = await asyncio.create_subprocess_exec(
                PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address={web}", stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        p = Prometheus(f"http://{web}")
        try:
            await until(p.targets_up, lambda up: up == len(targets), within=30)
            yield cluster, p, cluster.database_url
        finally:
            await p.http.aclose()
            prom.terminate()
            await asyncio.wait_for(prom.wait(), 10)


async def _submit_alone(url: str, headers: dict[str, str]) -> str:
    """A noop submitted on a connection of its own: it may reach either api process."""
    async with httpx.AsyncClient() as fresh:
        r = await fresh.post(f"{url}/v1/jobs", json={"type": "noop"}, headers=headers)
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def _total(exposition: str, name: str) -> float:
    return sum(
        s.value
        for family in text_string_to_metric_families(exposition)
        for s in family.samples
        if s.name == name
    )


async def test_prometheus_sees_what_the_database_holds(
    system: tuple[Cluster, Prometheus, str],
) -> None:
    cluster, prom, url = system
    engine = make_engine(Settings(database_url=url), "tests", pool_size=1)
    try:
        client, secret = await ClientStore(engine).register(
            "prom", "acme", ["jobs:write", "jobs:read"]
        )
    finally:
        await engine.dispose()
    # Given a known workload: 7 waiting where no worker reads, 3 delayed, 2 failing with a
    # long backoff, 1 running for a minute, 20 done.
    async with jobq.AsyncClient(
        url=cluster.url, client_id=str(client.id), client_secret=secret
    ) as c:
        await c.submit_many([{"type": "noop", "queue": "parked"}] * 7)
        await c.submit_many([{"type": "noop", "delay": 3600}] * 3)
        failing = [await c.submit("fail", {"message": "boom"}, max_attempts=3) for _ in range(2)]
        sleeper = await c.submit("sleep", {"seconds": 60})
        token = {"Authorization": f"Bearer {await c.token()}"}
        done = [await _submit_alone(cluster.url, token) for _ in range(20)]
        await asyncio.gather(*(c.wait(j, timeout=30) for j in done))
        for j in [*failing, sleeper]:
            await until(
                functools.partial(c.get, j.id),
                lambda got: got.status in ("retrying", "running"),
                30,
            )

    conn = await asyncpg.connect(dsn(url))
    try:
        db = {
            (r["queue"], r["status"]): r["n"]
            for r in await conn.fetch("SELECT queue, status, count(*) AS n FROM jobs GROUP BY 1, 2")
        }
    finally:
        await conn.close()
    assert db == {
        ("parked", "queued"): 7, ("default", "scheduled"): 3, ("default", "retrying"): 2,
        ("default", "running"): 1, ("default", "succeeded"): 20,
    }  # fmt: skip

    # Then Prometheus, scraping every second, shows the same per-queue figures ...
    expected = {
        'max by (queue) (jobq_queue_ready_jobs{queue="parked"})': db[("parked", "queued")],
        'max by (queue) (jobq_queue_ready_jobs{queue="default"})': 0,
        'max by (queue) (jobq_queue_delayed_jobs{queue="default"})': db[("default", "scheduled")],
        'max by (queue) (jobq_queue_retrying_jobs{queue="default"})': db[("default", "retrying")],
        'max by (queue) (jobq_queue_running_jobs{queue="default"})': db[("default", "running")],
        "sum(jobq_worker_in_flight_jobs)": 1,
        "sum(jobq_jobs_submitted_total)": sum(db.values()),
        'sum(jobq_jobs_succeeded_total{type="noop"})': db[("default", "succeeded")],
        'sum(jobq_jobs_failed_total{type="fail"})': db[("default", "retrying")],
        'sum(jobq_jobs_started_total{queue="default"})': 20 + 2 + 1,
        'sum(jobq_job_run_seconds_count{type="noop"})': 20,
        'sum(jobq_job_queue_wait_seconds_count{queue="default"})': 23,
        "sum(jobq_dead_letter_messages)": 0,
    }

    async def seen() -> dict[str, float | None]:
        return {expr: await prom.one(expr) for expr in expected}

    got = await until(seen, lambda s: s == expected, within=30)
    assert got == expected
    # Each scrape reaches one of the two api processes; every one counts both.
    for _ in range(10):
        async with httpx.AsyncClient() as fresh:
            text = (await fresh.get(f"{cluster.url}/metrics")).text
        assert _total(text, "jobq_jobs_submitted_total") == sum(db.values())
    # ... and the rest of the story.
    assert (await prom.one('max(jobq_queue_oldest_ready_age_seconds{queue="parked"})') or 0) > 0
    assert await prom.one('sum(jobq_submit_seconds_count{route="batch"})') == 2
    assert (await prom.one("sum(jobq_publish_confirm_seconds_count)") or 0) > 0
    ages = await prom.query("jobq_loop_progress_age_seconds")
    loops = {k.split("loop=")[1].split(",")[0] for k in ages}
    assert loops == {"deliveries", "heartbeat", "tick", "retention", "dispatch", "callbacks"}
    assert all(age < 60 for age in ages.values())
    async with httpx.AsyncClient(timeout=5) as http:
        for port in cluster.metrics_ports.values():
            assert (await http.get(f"http://127.0.0.1:{port}/health")).status_code == 200
            assert (await http.get(f"http://127.0.0.1:{port}/health/ready")).status_code == 200
