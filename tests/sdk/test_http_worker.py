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
        served = {t.name: t for t in await client.types()}  # registered for its tenant
        assert {"sdk.double", "sdk.refuse", "sdk.slow"} <= set(served)
        assert served["sdk.double"].schema == {"type": "integer"}
        assert served["sdk.double"].tenant is not None


async def test_the_sync_client_speaks_the_lease_protocol(live: Live) -> None:
    creds = await live.credentials(scopes=SCOPES)
    await asyncio.to_thread(_lease_protocol, live.url, creds)


def _lease_protocol(url: str, creds: jobq.Credentials) -> None:
    with jobq.Client(creds) as client:
        h = {"Authorization": f"Bearer {client.token()}"}
        httpx.post(f"{url}/v1/admin/queues", json={"name": "sdk-sync"}, headers=h)
        jobs = [client.submit("sdk.double", i, queue="sdk-sync") for i in range(3)]
        leases = client.lease(["sdk-sync"], max_jobs=3, lease_seconds=30)
        assert sorted(lease.id for lease in leases) == sorted(j.id for j in jobs)
        first, second, third = leases
        beat = client.heartbeat(first, 30, progress=(0.5, "half"))
        assert (beat.lease_seconds, beat.cancel_requested) == (30, False)
        progress = client.get(first.id).progress
        assert progress is not None
        assert (progress.fraction, progress.message) == (0.5, "half")
        assert client.complete(first, "done").status is jobq.JobStatus.SUCCEEDED
        with pytest.raises(jobq.Conflict):
            client.complete(first, "twice")
        failed = client.fail(second, "disk full", error_type="IOError", retryable=False)
        assert (failed.status, failed.last_error["type"]) == (jobq.JobStatus.DEAD, "IOError")
        retried = client.fail(third, "flaky")
        assert retried.status is jobq.JobStatus.RETRYING
        [registered] = client.register_types([double])
        assert (registered.name, registered.served) == ("sdk.double", True)
        assert registered.tenant == first.tenant


async def test_jobq_http_worker_runs_a_project_s_handlers_until_sigterm(live: Live) -> None:
    creds = await live.credentials(scopes=SCOPES)
    async with jobq.AsyncClient(creds) as client:
        token = await asyncio.to_thread(_token, client)
        async with httpx.AsyncClient(base_url=live.url) as http:
            h = {"Authorization": f"Bearer {token}"}
            await http.post("/v1/admin/queues", json={"name": "sdk-cli"}, headers=h)
        env = {
            **os.environ, "JOBQ_URL": live.url, "JOBQ_CLIENT_ID": creds.client_id,
            "JOBQ_CLIENT_SECRET": creds.client_secret,
        }  # fmt: skip
        worker = await asyncio.create_subprocess_exec(
            str(REPO_ROOT / ".venv" / "bin" / "jobq-http-worker"), "--handlers", "myapp.jobs",
            "--queues", "sdk-cli", "--concurrency", "2", cwd=REPO_ROOT / "examples" / "python",
            env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        try:
            job = await client.submit("myapp.welcome", {"name": "Ada"}, queue="sdk-cli")
            thumb = await client.submit("myapp.thumbnail", {"image": "a.png"}, queue="sdk-cli")
            assert (await client.wait(job.id, timeout=30)).result == "Welcome, Ada!"
            done = await client.wait(thumb.id, timeout=30)
            assert done.result == {"thumbnail": "a.png@128px", "attempt": 1}
        finally:
            worker.terminate()
            out = (await asyncio.wait_for(worker.communicate(), 30))[0].decode()
        assert worker.returncode == 0, out
        assert "http worker leasing" in out, out
        assert "http worker stopped" in out, out
        served = {t.name for t in await client.types()}
        assert {"myapp.welcome", "myapp.thumbnail"} <= served


def test_jobq_http_worker_refuses_a_bad_module_in_one_line() -> None:
    bin_ = str(REPO_ROOT / ".venv" / "bin" / "jobq-http-worker")
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBQ_")}
    for args, says in [
        (["--handlers", "myapp.nope"], "cannot import handler module 'myapp.nope'"),
        ([], "name the handler modules"),
        (["--handlers", "myapp.jobs"], "set JOBQ_URL, JOBQ_CLIENT_ID, JOBQ_CLIENT_SECRET"),
    ]:
        done = subprocess.run(
            [bin_, *args], cwd=REPO_ROOT / "examples" / "python", env=env,
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert done.returncode == 2, done
        assert done.stderr.count("\n") == 1, done.stderr
        assert says in done.stderr
