"""``jobq.Client`` and ``jobq.AsyncClient`` against the real API processes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid

import jobq
import pytest
from jobq import Client, JobStatus

from tests.procs import REPO_ROOT
from tests.sdk.conftest import Live

pytestmark = pytest.mark.e2e


async def test_submit_wait_get_and_list_follow_the_job(live: Live) -> None:
    with Client(await live.credentials()) as client:
        job = client.submit("echo", {"n": 1}, priority=7)
        assert job.status is JobStatus.QUEUED
        assert job.priority == 7
        done = client.wait(job.id, timeout=30)
        assert done.status is JobStatus.SUCCEEDED
        assert done.result == {"n": 1}
        assert client.get(job.id) == done
        more = [client.submit("noop", delay=3600) for _ in range(5)]
        listed = list(client.list(page_size=2))  # three pages, followed by cursor
        assert [j.id for j in listed] == [j.id for j in reversed([job, *more])]
        scheduled = list(client.list(status=JobStatus.SCHEDULED, page_size=50))
        assert {j.id for j in scheduled} == {j.id for j in more}


async def test_a_submit_sent_again_with_its_key_is_one_job(live: Live) -> None:
    with Client(await live.credentials()) as client:
        first = client.submit("noop", delay=3600, idempotency_key="order-17")
        again = client.submit("noop", delay=3600, idempotency_key="order-17")
        assert again.id == first.id
        # Without a key of the caller's, each call makes its own (the SDK's key is per call).
        assert client.submit("noop", delay=3600).id != client.submit("noop", delay=3600).id


async def test_submit_many_goes_in_batches_of_the_api_limit(live: Live) -> None:
    with Client(await live.credentials()) as client:
        specs = [{"type": "noop", "payload": {"i": i}, "delay": 3600} for i in range(1001)]
        specs[3]["idempotency_key"] = "mine"
        jobs = client.submit_many(specs)
        assert [j.payload for j in jobs] == [{"i": i} for i in range(1001)]
        assert jobs[3].idempotency_key == "mine"
        assert len({j.id for j in jobs}) == 1001


async def test_refusals_are_typed_errors(live: Live) -> None:
    creds = await live.credentials()
    with Client(creds) as client:
        with pytest.raises(jobq.NotFound):
            client.get(uuid.uuid4())
        with pytest.raises(jobq.InvalidJob) as invalid:
            client.submit("no spaces allowed")
        assert invalid.value.field == "type"
        assert invalid.value.status == 422
        done = client.wait(client.submit("noop").id, timeout=30)
        with pytest.raises(jobq.Conflict, match="already succeeded"):
            client.cancel(done.id)
        with pytest.raises(jobq.Conflict):
            client.retry(done.id)
    other = await live.credentials(tenant="globex")
    with Client(other) as client, pytest.raises(jobq.NotFound):
        client.get(done.id)  # another tenant's job does not exist for this one
    wrong = Client(url=live.url, client_id=creds.client_id, client_secret="wrong")
    with wrong, pytest.raises(jobq.Unauthorized):
        wrong.get(done.id)
    reader = await live.credentials(scopes=["jobs:read"])
    with Client(reader) as client, pytest.raises(jobq.Forbidden):
        client.submit("noop")


async def test_cancel_and_retry(live: Live) -> None:
    with Client(await live.credentials()) as client:
        job = client.submit("noop", delay=3600)
        canceled = client.cancel(job.id)
        assert canceled.status is JobStatus.CANCELED
        again = client.retry(job.id)
        assert again.status is JobStatus.QUEUED
        assert client.wait(job.id, timeout=30).status is JobStatus.SUCCEEDED


async def test_wait_gives_up_with_the_job_as_last_seen(live: Live) -> None:
    with Client(await live.credentials()) as client:
        job = client.submit("sleep", {"seconds": 3})
        with pytest.raises(jobq.WaitTimeout) as timeout:
            client.wait(job.id, timeout=0.5)
        assert timeout.value.job.id == job.id
        assert not timeout.value.job.status.is_terminal
        assert isinstance(timeout.value, TimeoutError)


async def test_a_token_the_api_refuses_is_renewed_once(live: Live) -> None:
    with Client(await live.credentials()) as client:
        job = client.submit("noop", delay=3600)
        # A token the API no longer takes (as after a signing-key rotation) that the client
        # still thinks fresh: the 401 makes it fetch a new one and send the call again.
        client._s.tokens.value = client._s.tokens.value[:-4] + "AAAA"  # type: ignore[index]
        assert client.get(job.id).id == job.id


async def test_the_async_client_shares_one_token_between_concurrent_calls(live: Live) -> None:
    async with jobq.AsyncClient(await live.credentials()) as client:
        jobs = await asyncio.gather(*(client.submit("echo", {"i": i}) for i in range(20)))
        token = client._s.tokens.value
        done = await asyncio.gather(*(client.wait(j.id, timeout=30) for j in jobs))
        assert [d.result for d in done] == [{"i": i} for i in range(20)]
        assert client._s.tokens.value == token
        listed = [j.id async for j in client.list(page_size=7)]
        assert set(listed) == {j.id for j in jobs}
        many = await client.submit_many([{"type": "noop", "delay": 60}] * 3)
        assert len({j.id for j in many}) == 3
        assert (await client.cancel(many[0].id)).status is JobStatus.CANCELED


async def test_the_async_client_lists_shows_replays_and_purges_dead_letters(live: Live) -> None:
    async with jobq.AsyncClient(await live.credentials()) as client:
        # ``sleep`` refuses a payload with an unknown field for good: dead at the first attempt.
        jobs = [await client.submit("sleep", {"secs": i}) for i in (0, 1)]
        for j in jobs:
            assert (await client.wait(j.id, timeout=30)).status is JobStatus.DEAD
        dead = [j async for j in client.dead(type="sleep", page_size=1)]
        assert {j.id for j in dead} == {j.id for j in jobs}
        [error_class] = {j.last_error["type"] for j in dead}
        key = f"fix-{uuid.uuid4()}"
        done = await client.replay([jobs[0].id], payload={"seconds": 0}, idempotency_key=key)
        assert [r.id for r in done.replayed] == [jobs[0].id]
        assert (await client.replay([jobs[0].id], payload={"seconds": 0},
                                    idempotency_key=key)).repeated  # fmt: skip
        assert (await client.wait(jobs[0].id, timeout=30)).result == {"slept": 0}
        letter = await client.dead_letter(jobs[0].id)
        assert [r.payload_replaced for r in letter.replays] == [True]
        counted = await client.purge(error=error_class)
        assert (counted.dry_run, counted.matched, counted.deleted) == (True, 1, 0)
        purged = await client.purge(dry_run=False, error=error_class)
        assert purged.deleted == 1
        with pytest.raises(jobq.NotFound):
            await client.dead_letter(jobs[1].id)


async def test_the_readme_example_runs(live: Live) -> None:
    section = (REPO_ROOT / "README.md").read_text().split("\n## Python SDK\n", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    creds = await live.credentials()
    env = {
        **os.environ,
        "JOBQ_URL": creds.url,
        "JOBQ_CLIENT_ID": creds.client_id,
        "JOBQ_CLIENT_SECRET": creds.client_secret,
    }
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-c", code], env=env, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
