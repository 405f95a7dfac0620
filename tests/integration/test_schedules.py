"""Cron schedules: the API (checks, pages, tenants, scopes) and the scheduler's firing (one
fire and one job per tick, catch-up bound, overlap policies, two schedulers at once)."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from typing import Any

import pytest
import sqlalchemy as sa
from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import AsyncEngine

from services.api.app import create_app
from services.scheduler.loop import Scheduler
from shared.config import Settings
from shared.db.jobs import JobStore
from shared.db.sweeps import SweepStore
from shared.db.types import TypeStore
from shared.domain import JobStatus
from tests.conftest import Bearer
from tests.integration.conftest import StartWorker
from tests.integration.test_retention import retention
from tests.integration.test_types import THUMB
from tests.integration.test_worker import final

pytestmark = pytest.mark.integration

Client = AsyncTestClient[Litestar]
HOURLY = {"name": "hourly", "cron": "0 * * * *", "job": {"type": "echo", "payload": {"n": 1}}}


async def create(api: Client, headers: dict[str, str], **body: Any) -> dict[str, Any]:
    r = await api.post("/v1/schedules", json={**HOURLY, **body}, headers=headers)
    assert r.status_code == 201, r.text
    assert r.headers["location"] == f"/v1/schedules/{r.json()['id']}"
    out: dict[str, Any] = r.json()
    return out


async def owe(engine: AsyncEngine, schedule_id: str, hours: int) -> None:
    """Make the schedule's ticks of the last ``hours`` hours and this hour's due (as after a
    downtime): its next tick ``hours`` hours before this hour's."""
    async with engine.begin() as conn:
        await conn.execute(
            sa.text(
                "UPDATE schedules SET next_fire_at = date_trunc('hour', now())"
                " - make_interval(hours => :h) WHERE id = :id"
            ),
            {"h": hours, "id": schedule_id},
        )


async def test_create_read_list_change_and_delete(api: Client, bearer: Bearer) -> None:
    headers = await bearer()
    made = await create(api, headers, timezone="Europe/Berlin", overlap="skip", catch_up=3)
    assert made["job"] == {"type": "echo", "payload": {"n": 1}, "queue": "default",
                           "priority": 5}  # fmt: skip
    assert made["next_fire_at"].endswith(":00:00Z")
    r = await api.post("/v1/schedules", json=HOURLY, headers=headers)
    assert r.status_code == 409
    for name in ("b-nightly", "c-weekly"):
        await create(api, headers, name=name)
    page = (await api.get("/v1/schedules?limit=2", headers=headers)).json()
    assert [s["name"] for s in page["items"]] == ["b-nightly", "c-weekly"]
    rest = (await api.get(f"/v1/schedules?limit=2&cursor={page['next_cursor']}",
                          headers=headers)).json()  # fmt: skip
    assert ([s["name"] for s in rest["items"]], rest["next_cursor"]) == (["hourly"], None)

    url = f"/v1/schedules/{made['id']}"
    got = (await api.get(url, headers=headers)).json()
    assert (got["name"], got["fires"], got["paused"]) == ("hourly", [], False)
    r = await api.patch(url, json={"cron": "*/5 * * * * *", "paused": True}, headers=headers)
    assert r.status_code == 200, r.text
    assert (r.json()["cron"], r.json()["paused"]) == ("*/5 * * * * *", True)
    assert r.json()["next_fire_at"] != made["next_fire_at"]
    r = await api.patch(url, json={"job": {"type": "noop", "priority": 9}}, headers=headers)
    assert r.json()["job"] == {"type": "noop", "payload": None, "queue": "default", "priority": 9}
    assert (await api.delete(url, headers=headers)).status_code == 204
    assert (await api.get(url, headers=headers)).status_code == 404
    assert (await api.delete(url, headers=headers)).status_code == 404


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"cron": "61 * * * *"}, "bad cron expression '61 * * * *': Bad minute"),
        ({"cron": "every day at noon"}, "Wrong number of fields"),
        ({"timezone": "Mars/Olympus"}, "unknown time zone 'Mars/Olympus'"),
        ({"job": {"type": "echo", "delay_seconds": 5}}, "runs at its tick"),
        ({"job": {"type": "echo", "queue": "nowhere"}}, "queue 'nowhere' is not declared"),
        ({"job": {"type": "echo", "priority": "5"}}, "priority"),
        ({"job": {"type": "Bad Type"}}, "type"),
        ({"overlap": "sometimes"}, "overlap"),
        ({"catch_up": 1001}, "catch_up"),
        ({"surprise": 1}, "surprise"),
    ],
)
async def test_bad_schedules_are_422_naming_what_is_wrong(
    api: Client, bearer: Bearer, body: dict[str, Any], says: str
) -> None:
    headers = await bearer()
    r = await api.post("/v1/schedules", json={**HOURLY, **body}, headers=headers)
    assert r.status_code == 422, r.text
    assert says in r.text
    assert (await api.get("/v1/schedules", headers=headers)).json()["items"] == []


async def test_another_tenants_schedule_is_404_and_scopes_hold(api: Client, bearer: Bearer) -> None:
    mine = await create(api, await bearer("acme"))
    theirs = await bearer("globex")
    url = f"/v1/schedules/{mine['id']}"
    assert (await api.get(url, headers=theirs)).status_code == 404
    assert (await api.patch(url, json={"paused": True}, headers=theirs)).status_code == 404
    assert (await api.delete(url, headers=theirs)).status_code == 404
    assert (await api.get("/v1/schedules", headers=theirs)).json()["items"] == []
    # The same name is free in another tenant.
    await create(api, theirs)
    reader = await bearer("acme", scopes=["jobs:read"])
    assert (await api.get(url, headers=reader)).status_code == 200
    assert (await api.post("/v1/schedules", json=HOURLY, headers=reader)).status_code == 403
    assert (await api.patch(url, json={"paused": True}, headers=reader)).status_code == 403
    assert (await api.delete(url, headers=reader)).status_code == 403
    writer = await bearer("acme", scopes=["jobs:write"])
    assert (await api.get("/v1/schedules", headers=writer)).status_code == 403


@pytest.fixture
def strict(scheduler: Scheduler) -> Scheduler:
    """The scheduler with a grace of a millisecond: every tick owed (this hour's too) was
    missed, so the catch-up bound applies to all of them."""
    scheduler.settings = replace(scheduler.settings, schedule_grace_seconds=0.001)
    return scheduler


async def test_missed_ticks_fire_up_to_the_bound_once_each_and_run(
    api: Client,
    bearer: Bearer,
    engine: AsyncEngine,
    strict: Scheduler,
    store: JobStore,
    start_worker: StartWorker,
) -> None:
    headers = await bearer()
    made = await create(api, headers, catch_up=2)
    await owe(engine, made["id"], hours=5)  # six ticks due: two fired, four skipped
    assert (await strict.tick())["scheduled"] == 2
    assert (await strict.tick())["scheduled"] == 0
    got = (await api.get(f"/v1/schedules/{made['id']}", headers=headers)).json()
    fires = got["fires"]
    assert [f["outcome"] for f in fires] == ["fired", "fired"]
    assert fires[0]["tick"] > fires[1]["tick"]
    assert got["skipped_ticks"] == 4
    assert got["last_tick"] == fires[0]["tick"]
    assert got["last_job_id"] == fires[0]["job_id"]
    await start_worker()
    for fire in fires:
        job = await final(store, uuid.UUID(fire["job_id"]), JobStatus.SUCCEEDED)
        assert job.result == {"n": 1}
        assert job.idempotency_key == f"schedule:{made['id']}:{fire['tick']}"


async def test_overlap_skip_and_cancel(
    api: Client, bearer: Bearer, engine: AsyncEngine, strict: Scheduler, store: JobStore
) -> None:
    headers = await bearer()
    made = {
        overlap: await create(api, headers, name=overlap, overlap=overlap, catch_up=2)
        for overlap in ("skip", "cancel", "allow")
    }
    for m in made.values():
        await owe(engine, m["id"], hours=1)
    # Two ticks due at once, no worker: the first tick's job is still queued at the second.
    assert (await strict.tick())["scheduled"] == 1 + 2 + 2

    async def fires(overlap: str) -> list[dict[str, Any]]:
        url = f"/v1/schedules/{made[overlap]['id']}"
        out: list[dict[str, Any]] = (await api.get(url, headers=headers)).json()["fires"]
        return out

    async def status(fire: dict[str, Any]) -> JobStatus:
        job = await store.get("acme", uuid.UUID(fire["job_id"]))
        assert job is not None
        return JobStatus(job.status)

    [later, first] = await fires("skip")
    assert (later["outcome"], later["job_id"]) == ("skipped_overlap", None)
    assert await status(first) == JobStatus.QUEUED
    [later, first] = await fires("cancel")
    assert (later["outcome"], first["outcome"]) == ("fired", "fired")
    assert (await status(first), await status(later)) == (JobStatus.CANCELED, JobStatus.QUEUED)
    [later, first] = await fires("allow")
    assert (await status(first), await status(later)) == (JobStatus.QUEUED, JobStatus.QUEUED)


async def test_two_schedulers_fire_each_tick_once(
    api: Client, bearer: Bearer, engine: AsyncEngine, strict: Scheduler
) -> None:
    headers = await bearer()
    made = [await create(api, headers, name=f"s{i}", catch_up=3) for i in range(30)]
    for m in made:
        await owe(engine, m["id"], hours=2)
    other = Scheduler(strict.settings, SweepStore(engine), strict.outbox, strict.broker, None)
    moved = await asyncio.gather(*(s.tick() for s in (strict, other, strict, other)))
    assert sum(m["scheduled"] for m in moved) == 90
    async with engine.connect() as conn:
        fires, jobs = (await conn.execute(sa.text(
            "SELECT (SELECT count(*) FROM schedule_fires WHERE outcome = 'fired'),"
            " (SELECT count(*) FROM jobs WHERE idempotency_key LIKE 'schedule:%')"
        ))).one()  # fmt: skip
    assert (fires, jobs) == (90, 90)


async def test_a_tenant_has_at_most_the_schedules_the_setting_allows(
    settings: Settings, bearer: Bearer, clean: None
) -> None:
    app = create_app(replace(settings, max_schedules_per_tenant=2))
    async with AsyncTestClient(app=app) as api:
        headers = await bearer()
        for name in ("one", "two"):
            await create(api, headers, name=name)
        r = await api.post("/v1/schedules", json={**HOURLY, "name": "three"}, headers=headers)
        assert r.status_code == 409
        assert "JOBQ_MAX_SCHEDULES_PER_TENANT" in r.json()["detail"]
        await create(api, await bearer("globex"), name="three")  # another tenant's own count


async def test_with_strict_types_a_schedules_job_is_checked_and_given_its_types_defaults(
    settings: Settings, bearer: Bearer, engine: AsyncEngine, clean: None
) -> None:
    await TypeStore(engine).register([("strict.thumb", THUMB, {"queue": "slow"})])
    async with AsyncTestClient(app=create_app(replace(settings, strict_types=True))) as api:
        headers = await bearer()
        r = await api.post("/v1/schedules", json={**HOURLY, "job": {"type": "strict.nope"}},
                           headers=headers)  # fmt: skip
        assert r.status_code == 422
        assert "strict.thumb" in r.json()["detail"]
        job = {"type": "strict.thumb", "payload": {"image": "a", "width": "wide"}}
        r = await api.post("/v1/schedules", json={**HOURLY, "job": job}, headers=headers)
        assert r.status_code == 422
        assert "width" in r.json()["detail"]
        made = await create(api, headers, job={"type": "strict.thumb", "payload": {"image": "a"}})
        assert made["job"]["queue"] == "slow"


async def test_fires_are_kept_as_long_as_succeeded_jobs(
    api: Client, bearer: Bearer, engine: AsyncEngine, settings: Settings
) -> None:
    made = await create(api, await bearer())
    async with engine.begin() as conn:
        await conn.execute(
            sa.text(
                "INSERT INTO schedule_fires (schedule_id, tick, outcome) SELECT :id,"
                " date_trunc('hour', now()) - make_interval(days => d), 'fired'"
                " FROM unnest(ARRAY[1, 6, 8, 9, 30]) AS d"
            ),
            {"id": made["id"]},
        )
    await retention(settings, engine, retention_succeeded_seconds=7 * 86400,
                    retention_batch_size=2).sweep()  # fmt: skip
    fires = (await api.get(f"/v1/schedules/{made['id']}", headers=await bearer())).json()["fires"]
    assert len(fires) == 2
    await retention(settings, engine, retention_succeeded_seconds=0).sweep()  # 0: kept
    assert (
        len((await api.get(f"/v1/schedules/{made['id']}", headers=await bearer())).json()["fires"])
        == 2
    )


async def test_a_schedule_that_cannot_fire_spares_the_others(
    api: Client, bearer: Bearer, engine: AsyncEngine, strict: Scheduler
) -> None:
    headers = await bearer()
    for name in ("broken", "fine"):
        await owe(engine, (await create(api, headers, name=name))["id"], hours=0)
    async with engine.begin() as conn:  # a template no code path writes
        await conn.execute(
            sa.text("UPDATE schedules SET job = '{\"queue\": 1}' WHERE name = 'broken'")
        )
    assert (await strict.tick())["scheduled"] == 1
    async with engine.connect() as conn:
        fired = (await conn.execute(sa.text(
            "SELECT s.name FROM schedule_fires f JOIN schedules s ON s.id = f.schedule_id"
        ))).scalars().all()  # fmt: skip
    assert fired == ["fine"]
