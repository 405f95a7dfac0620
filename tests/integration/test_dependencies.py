"""Jobs that wait for others (docs/design.md §2.1), through the API, on real workers and a
ticking scheduler."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import datetime
from typing import Any

import pytest
import sqlalchemy as sa
from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import AsyncEngine

from services.scheduler.loop import Scheduler
from tests.conftest import Bearer
from tests.integration.conftest import StartWorker, ticking, wait_for
from tests.integration.test_api import job_status, wait_status
from tests.procs import REPO_ROOT

Client = AsyncTestClient[Litestar]
pytestmark = pytest.mark.integration

README = REPO_ROOT / "README.md"
DIES = {"type": "fail", "payload": {"permanent": True}, "max_attempts": 1}


async def submit(api: Client, h: dict[str, str], **body: Any) -> dict[str, Any]:
    r = await api.post("/v1/jobs", json=body, headers=h)
    assert r.status_code == 202, r.text
    return dict(r.json())


def at(job: dict[str, Any], field: str) -> datetime:
    return datetime.fromisoformat(job[field])


async def test_a_job_waits_for_its_dependency_then_runs_after_it(
    bearer: Bearer, api: Client, scheduler: Scheduler, start_worker: StartWorker
) -> None:
    h = await bearer()
    first = await submit(api, h, type="sleep", payload={"seconds": 0.3})
    then = await submit(api, h, type="echo", payload=1, depends_on=[first["id"]])
    assert then["status"] == "waiting"
    assert then["waiting_on"] == 1
    assert then["depends_on"] == [first["id"]]
    listed = await api.get("/v1/jobs", params={"status": "waiting"}, headers=h)
    assert [j["id"] for j in listed.json()["items"]] == [then["id"]]
    await start_worker()
    async with ticking(scheduler):
        done = await wait_status(api, h, then["id"], "succeeded")
    before = await job_status(api, h, first["id"])
    assert at(done, "started_at") >= at(before, "finished_at")
    assert done["waiting_on"] == 0
    assert done["attempts"] == 1


async def test_a_failed_dependency_cancels_its_dependent_unless_it_runs_anyway(
    bearer: Bearer, api: Client, scheduler: Scheduler, start_worker: StartWorker
) -> None:
    h = await bearer()
    doomed = await submit(api, h, **DIES)
    canceled = await submit(api, h, type="echo", depends_on=[doomed["id"]])
    anyway = await submit(
        api, h, type="echo", payload=2, depends_on=[doomed["id"]], on_dependency_failure="run"
    )
    # and a job waiting for the canceled one is canceled in turn, in the same transaction
    chained = await submit(api, h, type="echo", depends_on=[canceled["id"]])
    await start_worker()
    async with ticking(scheduler):
        job = await wait_status(api, h, canceled["id"], "canceled")
        ran = await wait_status(api, h, anyway["id"], "succeeded")
    assert job["last_error"]["type"] == "DependencyFailed"
    assert doomed["id"] in job["last_error"]["message"]
    assert job["errors"] == [job["last_error"]]
    assert ran["result"] == 2
    after = await job_status(api, h, chained["id"])
    assert after["status"] == "canceled"
    assert after["last_error"]["dependency"] == canceled["id"]


async def test_dependencies_that_finished_before_the_submit_count_as_they_ended(
    bearer: Bearer, api: Client, scheduler: Scheduler, start_worker: StartWorker
) -> None:
    h = await bearer()
    await start_worker()
    ok, doomed = await submit(api, h, type="noop"), await submit(api, h, **DIES)
    async with ticking(scheduler):
        await wait_status(api, h, ok["id"], "succeeded")
        await wait_status(api, h, doomed["id"], "dead")
        runs = await submit(api, h, type="echo", payload=3, depends_on=[ok["id"]])
        assert runs["status"] == "queued"  # nothing left to wait for: published at once
        refused = await submit(api, h, type="echo", depends_on=[ok["id"], doomed["id"]])
        assert refused["status"] == "canceled"
        assert refused["last_error"]["dependency"] == doomed["id"]
        assert (await wait_status(api, h, runs["id"], "succeeded"))["result"] == 3


async def test_unknown_and_foreign_dependencies_are_refused_and_insert_nothing(
    bearer: Bearer, api: Client, engine: AsyncEngine
) -> None:
    h, other = await bearer("acme"), await bearer("globex")
    theirs = await submit(api, other, type="noop", delay_seconds=60)
    for missing in (theirs["id"], str(uuid.uuid4())):
        r = await api.post("/v1/jobs", json={"type": "noop", "depends_on": [missing]}, headers=h)
        assert r.status_code == 422, r.text
        assert r.json()["errors"][0]["key"] == "depends_on"
        assert missing in r.json()["detail"]
    async with engine.connect() as conn:
        assert await conn.scalar(sa.text("SELECT count(*) FROM jobs WHERE tenant = 'acme'")) == 0
        flagged = await conn.scalar(sa.text("SELECT count(*) FROM jobs WHERE has_dependents"))
        assert flagged == 0


@pytest.mark.parametrize(
    ("after", "why"),
    [([[1], [0]], "cycle: 0 -> 1 -> 0"), ([[0]], "cycle: 0 -> 0"), ([[5]], "names 5")],
)
async def test_a_batch_whose_jobs_wait_in_a_cycle_is_refused(
    bearer: Bearer, api: Client, after: list[list[int]], why: str
) -> None:
    h = await bearer()
    body = {"jobs": [{"type": "noop", "after": a} for a in after]}
    r = await api.post("/v1/jobs/batch", json=body, headers=h)
    assert r.status_code == 422, r.text
    assert why in r.json()["detail"]
    assert r.json()["errors"][0]["key"] == "after"


async def test_a_batch_runs_a_diamond_in_order_and_its_completion_job_once_at_the_end(
    bearer: Bearer, api: Client, scheduler: Scheduler, start_worker: StartWorker
) -> None:
    h = await bearer()
    body = {
        "jobs": [
            {"type": "sleep", "payload": {"seconds": 0.2}},
            {"type": "echo", "payload": "left", "after": [0]},
            {"type": "fail", "payload": {"permanent": True}, "max_attempts": 1, "after": [0]},
            {"type": "echo", "payload": "bottom", "after": [1, 2]},
        ],
        "on_complete": {"type": "echo", "payload": "all done"},
    }
    r = await api.post("/v1/jobs/batch", json=body, headers=h)
    assert r.status_code == 202, r.text
    items, completion = r.json()["items"], r.json()["on_complete"]
    assert [j["status"] for j in items] == ["queued", "waiting", "waiting", "waiting"]
    assert completion["status"] == "waiting"
    assert completion["waiting_on"] == 4
    assert completion["on_dependency_failure"] == "run"
    await start_worker()
    async with ticking(scheduler):
        done = await wait_status(api, h, completion["id"], "succeeded")
    jobs = [await job_status(api, h, j["id"]) for j in items]
    assert [j["status"] for j in jobs] == ["succeeded", "succeeded", "dead", "canceled"]
    assert jobs[3]["last_error"]["dependency"] == items[2]["id"]
    assert at(jobs[1], "started_at") >= at(jobs[0], "finished_at")
    assert at(done, "started_at") >= max(at(j, "finished_at") for j in jobs)
    assert done["attempts"] == 1


async def test_canceling_a_waiting_job_cancels_what_waits_for_it(
    bearer: Bearer, api: Client
) -> None:
    h = await bearer()
    first = await submit(api, h, type="noop", delay_seconds=60)
    middle = await submit(api, h, type="noop", depends_on=[first["id"]])
    last = await submit(api, h, type="noop", depends_on=[middle["id"]])
    r = await api.post(f"/v1/jobs/{middle['id']}/cancel", headers=h)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "canceled"
    assert (await job_status(api, h, last["id"]))["status"] == "canceled"
    assert (await job_status(api, h, first["id"]))["status"] == "scheduled"


async def test_an_idempotent_resubmit_of_a_dependent_returns_the_same_job(
    bearer: Bearer, api: Client
) -> None:
    h = await bearer()
    first = await submit(api, h, type="noop", delay_seconds=60)
    body = {"type": "noop", "depends_on": [first["id"]]}
    keyed = {**h, "Idempotency-Key": "dep-1"}
    one = await api.post("/v1/jobs", json=body, headers=keyed)
    two = await api.post("/v1/jobs", json=body, headers=keyed)
    assert (one.status_code, two.status_code) == (202, 200)
    assert one.json()["id"] == two.json()["id"]
    assert two.json()["status"] == "waiting"


async def test_dependents_submitted_while_their_dependencies_finish_all_run_once(
    bearer: Bearer,
    api: Client,
    scheduler: Scheduler,
    start_worker: StartWorker,
    engine: AsyncEngine,
) -> None:
    """The race the lock closes: a dependency finishing between the submit's read of its
    status and the edge's insert would leave its dependent waiting for ever."""
    h = await bearer()
    await start_worker(worker_concurrency=16)
    parents = [await submit(api, h, type="noop") for _ in range(40)]
    children = await asyncio.gather(
        *(submit(api, h, type="test.record", depends_on=[p["id"]]) for p in parents)
    )
    async with ticking(scheduler):
        await wait_for(
            lambda: _count(engine, "status = 'succeeded' AND type = 'test.record'", 40), within=30
        )
    async with engine.connect() as conn:
        late = await conn.scalar(
            sa.text("""
            SELECT count(*) FROM jobs c JOIN jobs p ON p.id = c.depends_on[1]
            WHERE c.id = ANY(:ids) AND (c.attempts <> 1 OR c.started_at < p.finished_at)
        """),
            {"ids": [uuid.UUID(c["id"]) for c in children]},
        )
    assert late == 0


async def test_the_readme_batch_runs_as_the_readme_says(
    bearer: Bearer, api: Client, scheduler: Scheduler, start_worker: StartWorker
) -> None:
    section = README.read_text().split("\n## Dependencies and batches\n", 1)[1].split("\n## ")[0]
    body = json.loads(section.split("```json\n", 1)[1].split("```", 1)[0])
    h = await bearer()
    r = await api.post("/v1/jobs/batch", json=body, headers=h)
    assert r.status_code == 202, r.text
    items, completion = r.json()["items"], r.json()["on_complete"]
    assert [(j["status"], j["waiting_on"]) for j in items] == [
        ("queued", None), ("queued", None), ("waiting", 2),
    ]  # fmt: skip
    assert (completion["status"], completion["waiting_on"]) == ("waiting", 3)
    await start_worker()
    async with ticking(scheduler):
        done = await wait_status(api, h, completion["id"], "succeeded")
    assert done["result"] == {"report": "nightly"}
    merged = await job_status(api, h, items[2]["id"])
    assert at(done, "started_at") >= at(merged, "finished_at")


async def _count(engine: AsyncEngine, where: str, n: int) -> bool:
    async with engine.connect() as conn:
        return bool(await conn.scalar(sa.text(f"SELECT count(*) FROM jobs WHERE {where}")) == n)
