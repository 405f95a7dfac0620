"""HTTP workers: leases, heartbeats, completions and failures over the API, fenced like the
AMQP worker's, side by side with it on one queue."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import httpx
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.config import Settings
from tests.conftest import Bearer
from tests.integration.conftest import StartWorker, listening, wait_for

Api = httpx.AsyncClient  # Litestar's test client, or a real server's (``listening``)
WORKER = ("jobs:write", "jobs:read", "jobs:work")


async def submit(api: Api, h: dict[str, str], n: int, **job: Any) -> list[str]:
    body = {"jobs": [{"type": "test.record", **job} for _ in range(n)]}
    r = await api.post("/v1/jobs/batch", json=body, headers=h)
    assert r.status_code == 202, r.text
    return [j["id"] for j in r.json()["items"]]


async def lease(api: Api, h: dict[str, str], **body: Any) -> list[dict[str, Any]]:
    r = await api.post("/v1/leases", json=body, headers=h)
    assert r.status_code in (200, 204), r.text
    return [] if r.status_code == 204 else list(r.json()["items"])


async def test_lease_complete_once_and_nothing_left_is_204(api: Api, bearer: Bearer) -> None:
    h = await bearer("acme", WORKER)
    ids = await submit(api, h, 3, payload={"n": 1}, priority=3)
    first = await lease(api, h, max_jobs=2)
    assert len(first) == 2
    assert {j["id"] for j in first} <= set(ids)
    assert first[0]["attempt"] == 1
    assert first[0]["payload"] == {"n": 1}
    job = first[0]
    done = {"lease_id": job["lease_id"], "result": {"ok": True}}
    r = await api.post(f"/v1/jobs/{job['id']}/complete", json=done, headers=h)
    assert r.status_code == 200, r.text
    assert (r.json()["status"], r.json()["result"]) == ("succeeded", {"ok": True})
    again = await api.post(f"/v1/jobs/{job['id']}/complete", json=done, headers=h)
    assert again.status_code == 409  # one terminal transition
    assert len(await lease(api, h, max_jobs=5)) == 1
    assert await lease(api, h) == []


async def test_another_tenant_neither_leases_nor_touches_the_jobs(api: Api, bearer: Bearer) -> None:
    h, other = await bearer("acme", WORKER), await bearer("globex", WORKER)
    await submit(api, h, 2)
    assert await lease(api, other, max_jobs=10) == []
    [job] = await lease(api, h)
    for verb in ("complete", "heartbeat"):
        r = await api.post(
            f"/v1/jobs/{job['id']}/{verb}", json={"lease_id": job["lease_id"]}, headers=other
        )
        assert r.status_code == 404, r.text
    reader = await bearer("acme", ("jobs:read", "jobs:write"))
    assert (await api.post("/v1/leases", json={}, headers=reader)).status_code == 403


async def test_a_lease_that_ran_out_or_is_not_this_one_is_409(
    api: Api, bearer: Bearer, engine: AsyncEngine
) -> None:
    h = await bearer("acme", WORKER)
    await submit(api, h, 1)
    [job] = await lease(api, h)
    wrong = {"lease_id": str(uuid.uuid4()), "message": "x"}
    assert (await api.post(f"/v1/jobs/{job['id']}/fail", json=wrong, headers=h)).status_code == 409
    async with engine.begin() as conn:  # the lease runs out (the worker froze, say)
        await conn.execute(
            sa.text("UPDATE jobs SET lease_expires_at = now() - interval '1 s' WHERE id = :id"),
            {"id": job["id"]},
        )
    late = {"lease_id": job["lease_id"], "result": 1}
    r = await api.post(f"/v1/jobs/{job['id']}/complete", json=late, headers=h)
    assert r.status_code == 409, r.text
    assert "running" in r.json()["detail"]


async def test_failures_retry_then_die_and_cancel_is_seen_at_heartbeat(
    api: Api, bearer: Bearer
) -> None:
    h = await bearer("acme", WORKER)
    [retried, final, canceled] = await submit(api, h, 3, max_attempts=2)
    leased = {j["id"]: j for j in await lease(api, h, max_jobs=3)}
    fail = {"message": "boom", "error_type": "IOError"}
    r = await api.post(
        f"/v1/jobs/{retried}/fail", json={**fail, "lease_id": leased[retried]["lease_id"]},
        headers=h,
    )  # fmt: skip
    assert r.json()["status"] == "retrying"
    assert r.json()["last_error"]["type"] == "IOError"
    r = await api.post(
        f"/v1/jobs/{final}/fail",
        json={**fail, "retryable": False, "lease_id": leased[final]["lease_id"]}, headers=h,
    )  # fmt: skip
    assert r.json()["status"] == "dead"
    beat = {"lease_id": leased[canceled]["lease_id"], "lease_seconds": 60}
    r = await api.post(f"/v1/jobs/{canceled}/heartbeat", json=beat, headers=h)
    assert r.json() == {"lease_seconds": 60, "cancel_requested": False}
    assert (await api.post(f"/v1/jobs/{canceled}/cancel", headers=h)).status_code == 200
    r = await api.post(f"/v1/jobs/{canceled}/heartbeat", json=beat, headers=h)
    assert r.json()["cancel_requested"] is True
    r = await api.post(
        f"/v1/jobs/{canceled}/fail", json={**fail, "lease_id": beat["lease_id"]}, headers=h
    )
    assert r.json()["status"] == "canceled"


async def test_a_waiting_lease_gets_a_job_submitted_meanwhile(
    settings: Settings, clean: None, bearer: Bearer
) -> None:
    h = await bearer("acme", WORKER)
    async with listening(settings) as api:  # requests that overlap: a real server
        started = time.monotonic()
        waiting = asyncio.create_task(lease(api, h, wait_seconds=10, types=["test.record"]))
        await asyncio.sleep(0.3)
        [job_id] = await submit(api, h, 1)
        [job] = await waiting
        assert job["id"] == job_id
        assert time.monotonic() - started < 3
        assert await lease(api, h, wait_seconds=0.3) == []  # and an empty wait ends in 204


async def test_http_and_amqp_workers_share_a_queue_and_finish_each_job_once(
    settings: Settings, bearer: Bearer, start_worker: StartWorker, engine: AsyncEngine
) -> None:
    h = await bearer("acme", WORKER)
    await start_worker()
    async with listening(settings) as api:
        await _share(api, h, engine)


async def _share(api: Api, h: dict[str, str], engine: AsyncEngine) -> None:
    ids = set(await submit(api, h, 200, payload={"sleep": 0.01}))
    by_http: set[str] = set()

    async def http_worker() -> None:
        while True:
            jobs = await lease(api, h, max_jobs=5, wait_seconds=0.5)
            if not jobs:
                return
            for j in jobs:
                done = {"lease_id": j["lease_id"], "result": "http"}
                r = await api.post(f"/v1/jobs/{j['id']}/complete", json=done, headers=h)
                assert r.status_code == 200, r.text
                by_http.add(j["id"])

    await asyncio.gather(http_worker(), http_worker())

    async def all_done() -> bool:
        async with engine.connect() as conn:
            left = await conn.scalar(
                sa.text("SELECT count(*) FROM jobs WHERE status <> 'succeeded'")
            )
        return bool(left == 0)

    await wait_for(all_done, within=30)
    async with engine.connect() as conn:
        rows = (await conn.execute(sa.text("SELECT id, attempts, result FROM jobs"))).all()
    assert {str(r.id) for r in rows} == ids
    assert all(r.attempts == 1 for r in rows)  # nothing ran twice
    assert {str(r.id) for r in rows if r.result == "http"} == by_http
    assert by_http  # both kinds of worker took part
    assert len(by_http) < len(ids)


async def test_progress_shows_while_the_job_runs(
    api: Api, bearer: Bearer, start_worker: StartWorker
) -> None:
    h = await bearer("acme", WORKER)
    await start_worker()
    r = await api.post(
        "/v1/jobs", json={"type": "test.progress", "payload": {"sleep": 3}}, headers=h
    )
    job_id = r.json()["id"]

    async def reported() -> dict[str, Any] | None:
        job = (await api.get(f"/v1/jobs/{job_id}", headers=h)).json()
        return job if job["progress"] else None

    job = await wait_for(reported, within=10)
    assert job["status"] == "running"
    assert (job["progress"]["fraction"], job["progress"]["message"]) == (0.5, "half way")
    assert job["progress"]["at"]
    # Over HTTP: a heartbeat carries it (on a queue the AMQP worker does not read).
    await submit(api, h, 1, queue="slow")
    [leased] = await lease(api, h, queues=["slow"])
    beat = {"lease_id": leased["lease_id"], "progress": {"fraction": 0.9, "message": "nearly"}}
    assert (
        await api.post(f"/v1/jobs/{leased['id']}/heartbeat", json=beat, headers=h)
    ).status_code == 200
    shown = (await api.get(f"/v1/jobs/{leased['id']}", headers=h)).json()["progress"]
    assert (shown["fraction"], shown["message"]) == (0.9, "nearly")
