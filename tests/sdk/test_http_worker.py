"""examples/http-worker/worker.sh (curl and jq) takes jobs over the lease protocol side by side
with jobq's AMQP worker on one queue; a leaseholder that vanishes loses its jobs to others."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections import Counter

import httpx
import jobq
import pytest

from tests.procs import REPO_ROOT
from tests.sdk.conftest import Live

pytestmark = pytest.mark.e2e

WORKER = REPO_ROOT / "examples" / "http-worker" / "worker.sh"
SCOPES = ("jobs:write", "jobs:read", "jobs:work", "admin")


def shell_worker(url: str, token: str, queue: str) -> subprocess.Popen[str]:
    env = {**os.environ, "JOBQ_URL": url, "JOBQ_TOKEN": token, "QUEUE": queue, "IDLE_EXITS": "2"}
    return subprocess.Popen(
        ["bash", str(WORKER)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


async def finished(worker: subprocess.Popen[str]) -> list[str]:
    """What the worker did (``completed ID`` / ``failed ID`` lines), once it stopped."""
    out, err = await asyncio.to_thread(worker.communicate, timeout=120)
    assert worker.returncode == 0, err
    return out.splitlines()


@pytest.mark.skipif(shutil.which("jq") is None or shutil.which("curl") is None, reason="no jq/curl")
async def test_the_shell_worker_shares_a_queue_with_the_amqp_worker(live: Live) -> None:
    async with jobq.AsyncClient(await live.credentials(scopes=SCOPES)) as client:
        token = await asyncio.to_thread(_token, client)
        worker = shell_worker(live.url, token, "default")  # waiting before the jobs come
        await asyncio.sleep(1)
        jobs = await client.submit_many([{"type": "echo", "payload": {"i": i}} for i in range(60)])
        ran = await asyncio.gather(*(client.wait(j.id, timeout=30) for j in jobs))
        by_shell = await finished(worker)
    assert [j.result for j in ran] == [{"i": i} for i in range(60)]
    assert Counter(j.attempts for j in ran) == {1: 60}  # each ran once, by one worker
    assert 0 < len(by_shell) < 60, by_shell  # both kinds of worker took part
    assert {line.split()[1] for line in by_shell} <= {str(j.id) for j in jobs}


@pytest.mark.skipif(shutil.which("jq") is None or shutil.which("curl") is None, reason="no jq/curl")
async def test_the_shell_worker_fails_what_it_cannot_do(live: Live) -> None:
    creds = await live.credentials(scopes=SCOPES)
    async with jobq.AsyncClient(creds) as client:
        token = await asyncio.to_thread(_token, client)
        async with httpx.AsyncClient(base_url=live.url) as http:  # a queue no AMQP worker reads
            r = await http.post(
                "/v1/admin/queues", json={"name": "shell-only"},
                headers={"Authorization": f"Bearer {token}"},
            )  # fmt: skip
            assert r.status_code in (201, 409), r.text
        ok = await client.submit("echo", {"a": 1}, queue="shell-only")
        bad = await client.submit("echo", {"fail": "no"}, queue="shell-only")
        lines = await finished(shell_worker(live.url, token, "shell-only"))
        assert sorted(lines) == sorted([f"completed {ok.id}", f"failed {bad.id}"])
        assert (await client.get(ok.id)).result == {"a": 1}
        dead = await client.get(bad.id)
    assert dead.status is jobq.JobStatus.DEAD
    assert dead.last_error["message"] == "no"


async def test_a_leaseholder_that_vanishes_loses_its_job_to_another_worker(live: Live) -> None:
    async with jobq.AsyncClient(await live.credentials(scopes=SCOPES)) as client:
        token = await asyncio.to_thread(_token, client)
        async with httpx.AsyncClient(base_url=live.url) as http:
            h = {"Authorization": f"Bearer {token}"}
            # A job nobody else can take at once: the AMQP worker would race for it.
            await http.post("/v1/admin/queues", json={"name": "held"}, headers=h)
            job = await client.submit("echo", [1], queue="held")
            r = await http.post(
                "/v1/leases", json={"queues": ["held"], "lease_seconds": 5}, headers=h
            )
            [leased] = r.json()["items"]
            # The holder dies (kill -9 mid-job: nothing more ever comes from it). The lease
            # runs out; the scheduler puts the job back; the next worker runs it again.
            await asyncio.sleep(6)
            r = await http.post(
                "/v1/leases", json={"queues": ["held"], "wait_seconds": 10}, headers=h
            )
            [again] = r.json()["items"]
            assert again["id"] == str(job.id)
            assert again["attempt"] == 2
            late = {"lease_id": leased["lease_id"], "result": "stale"}
            stale = await http.post(f"/v1/jobs/{job.id}/complete", json=late, headers=h)
            assert stale.status_code == 409  # the first holder's lease no longer counts
            fresh = {"lease_id": again["lease_id"], "result": "fresh"}
            r = await http.post(f"/v1/jobs/{job.id}/complete", json=fresh, headers=h)
            assert r.status_code == 200, r.text
        assert (await client.get(job.id)).result == "fresh"


def _token(client: jobq.AsyncClient) -> str:
    with jobq.Client(client._s.credentials) as sync:
        return sync.token()


@jobq.handler("sdk.double")
async def double(payload: int) -> int:
    return payload * 2


@jobq.handler("sdk.refuse")
def refuse(payload: object) -> None:
    raise jobq.PermanentError("never")


@jobq.handler("sdk.slow")
async def slow(payload: float, ctx: jobq.JobContext) -> str:
    ctx.progress(0.1, "sleeping")
    await asyncio.sleep(payload)
    return f"woke on attempt {ctx.attempt}"


async def test_the_sdk_http_worker_runs_handlers_and_honours_cancel(live: Live) -> None:
    async with jobq.AsyncClient(await live.credentials(scopes=SCOPES)) as client:
        token = await asyncio.to_thread(_token, client)
        async with httpx.AsyncClient(base_url=live.url) as http:  # no AMQP worker reads it
            await http.post(
                "/v1/admin/queues", json={"name": "sdk-http"},
                headers={"Authorization": f"Bearer {token}"},
            )  # fmt: skip
        worker = jobq.HttpWorker(
            client, [double, refuse, slow], queues=["sdk-http"], concurrency=4,
            lease_seconds=6, wait_seconds=1,
        )  # fmt: skip
        stop = asyncio.Event()
        running = asyncio.create_task(worker.run(stop))
        doubles = await client.submit_many(
            [{"type": "sdk.double", "payload": i, "queue": "sdk-http"} for i in range(10)]
        )
        refused = await client.submit("sdk.refuse", queue="sdk-http")
        sleeper = await client.submit("sdk.slow", 60, queue="sdk-http")
        done = await asyncio.gather(*(client.wait(j.id, timeout=30) for j in doubles))
        assert [j.result for j in done] == [2 * i for i in range(10)]
        dead = await client.wait(refused.id, timeout=30)
        assert (dead.status, dead.attempts) == (jobq.JobStatus.DEAD, 1)
        assert dead.last_error["message"] == "never"
        short = await client.submit("sdk.slow", 0.1, queue="sdk-http")
        assert (await client.wait(short.id, timeout=30)).result == "woke on attempt 1"
        running_ = await client.get(sleeper.id)
        for _ in range(50):  # the progress goes out with a heartbeat a second after the report
            if running_.progress is not None:
                break
            await asyncio.sleep(0.1)
            running_ = await client.get(sleeper.id)
        assert running_.progress is not None
        assert (running_.progress.fraction, running_.progress.message) == (0.1, "sleeping")
        await client.cancel(sleeper.id)  # running: seen at its next heartbeat (every 2 s)
        canceled = await client.wait(sleeper.id, timeout=15)
        assert canceled.status is jobq.JobStatus.CANCELED
        stop.set()
        await asyncio.wait_for(running, 30)
