"""Retention: the scheduler deletes finished jobs past their time (the setting's, or their
queue's), in batches, and nothing else; an idempotency key ends with its job."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
import sqlalchemy as sa
from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import AsyncEngine

from services.scheduler.retention import Retention
from shared.config import Settings
from shared.db.queues import QueueStore
from shared.db.submits import SubmitStore
from shared.db.sweeps import SweepStore
from shared.liveness import Liveness
from shared.metrics import Metrics
from tests.conftest import Bearer
from tests.integration.test_worker import new_job

pytestmark = pytest.mark.integration

DAY = 86400


async def finished(
    engine: AsyncEngine, n: int, status: str, days_ago: float, queue: str = "default", **kw: Any
) -> list[str]:
    """``n`` jobs of ``queue`` that ended ``status`` ``days_ago`` days ago."""
    rows = await SubmitStore(engine).insert([new_job(queue=queue, **kw) for _ in range(n)])
    ids = [str(row.id) for row, _ in rows]
    async with engine.begin() as conn:
        await conn.execute(
            sa.text(
                "UPDATE jobs SET status = :status,"
                " finished_at = now() - make_interval(secs => :ago) WHERE id = ANY(CAST(:ids AS uuid[]))"
            ),
            {"status": status, "ago": days_ago * DAY, "ids": ids},
        )
    return ids


async def remaining(engine: AsyncEngine) -> dict[tuple[str, str], int]:
    async with engine.connect() as conn:
        rows = await conn.execute(sa.text("SELECT queue, status, count(*) FROM jobs GROUP BY 1, 2"))
        return {(q, s): n for q, s, n in rows}


def retention(settings: Settings, engine: AsyncEngine, **overrides: Any) -> Retention:
    return Retention(
        replace(settings, **overrides), SweepStore(engine), QueueStore(engine), Metrics("scheduler"),
        Liveness(60, ["retention"]),
    )  # fmt: skip


async def test_finished_jobs_past_their_retention_are_deleted_and_nothing_else(
    settings: Settings, engine: AsyncEngine, clean: None
) -> None:
    # Given jobs on either side of each status's retention (7 days succeeded, 30 dead and
    # canceled), a queue that keeps its successes 1 day and its dead jobs forever, a queue
    # no longer declared, and old jobs that never finished
    await finished(engine, 5, "succeeded", 8)
    await finished(engine, 2, "succeeded", 6)
    await finished(engine, 3, "dead", 31)
    await finished(engine, 1, "dead", 29)
    await finished(engine, 4, "canceled", 31)
    await QueueStore(engine).update("slow", {"retention_succeeded_seconds": DAY,
                                             "retention_dead_seconds": 0})  # fmt: skip
    await finished(engine, 3, "succeeded", 2, queue="slow")
    await finished(engine, 2, "dead", 400, queue="slow")
    await finished(engine, 2, "succeeded", 8, queue="other")
    async with engine.begin() as conn:
        await conn.execute(sa.text("DELETE FROM queues WHERE name = 'other'"))
    await SubmitStore(engine).insert([new_job(delay_seconds=3600.0) for _ in range(2)])
    async with engine.begin() as conn:  # unfinished and a year old: never deleted
        await conn.execute(sa.text("UPDATE jobs SET created_at = now() - interval '1 year'"))

    # When the scheduler sweeps, 2 jobs a statement
    sweep = retention(settings, engine, retention_batch_size=2)
    assert await sweep.sweep() == 5 + 3 + 4 + 3 + 2

    # Then only those past their retention are gone
    assert await remaining(engine) == {
        ("default", "succeeded"): 2, ("default", "dead"): 1, ("default", "scheduled"): 2,
        ("slow", "dead"): 2,
    }  # fmt: skip
    deleted = {
        (s.labels["queue"], s.labels["status"]): s.value
        for family in sweep.metrics.registry.collect()
        for s in family.samples
        if s.name == "jobq_jobs_deleted_total"
    }
    assert deleted == {
        ("default", "succeeded"): 5, ("default", "dead"): 3, ("default", "canceled"): 4,
        ("slow", "succeeded"): 3, ("other", "succeeded"): 2,
    }  # fmt: skip
    assert await sweep.sweep() == 0


async def test_retention_zero_keeps_finished_jobs_forever(
    settings: Settings, engine: AsyncEngine, clean: None
) -> None:
    await finished(engine, 3, "succeeded", 3650)
    sweep = retention(settings, engine, retention_succeeded_seconds=0.0)
    assert await sweep.sweep() == 0
    assert await remaining(engine) == {("default", "succeeded"): 3}


async def test_an_idempotency_key_is_honoured_as_long_as_its_job_lives(
    settings: Settings, engine: AsyncEngine, clean: None, bearer: Bearer
) -> None:
    async with AsyncTestClient(app=_app(settings)) as api:
        h = {**(await bearer()), "Idempotency-Key": "nightly-2026-12-01"}
        first = (await api.post("/v1/jobs", json={"type": "noop"}, headers=h)).json()["id"]
        again = await api.post("/v1/jobs", json={"type": "noop"}, headers=h)
        assert (again.status_code, again.json()["id"]) == (200, first)
        async with engine.begin() as conn:
            await conn.execute(
                sa.text(
                    "UPDATE jobs SET status = 'succeeded', finished_at = now() - interval '8 days'"
                )
            )
        assert await retention(settings, engine).sweep() == 1
        renewed = await api.post("/v1/jobs", json={"type": "noop"}, headers=h)
        assert renewed.status_code == 202
        assert renewed.json()["id"] != first


async def test_queue_retention_is_set_changed_and_reset_over_the_admin_api(
    api: AsyncTestClient[Litestar], bearer: Bearer
) -> None:
    h = await bearer("ops", ("admin",))
    r = await api.post(
        "/v1/admin/queues", json={"name": "reports", "retention_succeeded_seconds": 3600},
        headers=h,
    )  # fmt: skip
    assert r.status_code == 201, r.text
    assert (r.json()["retention_succeeded_seconds"], r.json()["retention_dead_seconds"]) == (
        3600, None,
    )  # fmt: skip
    r = await api.patch("/v1/admin/queues/reports", json={"retention_dead_seconds": 0}, headers=h)
    assert (r.json()["retention_succeeded_seconds"], r.json()["retention_dead_seconds"]) == (
        3600, 0,
    )  # fmt: skip
    r = await api.patch(
        "/v1/admin/queues/reports", json={"retention_succeeded_seconds": None}, headers=h
    )
    assert (r.json()["retention_succeeded_seconds"], r.json()["retention_dead_seconds"]) == (
        None, 0,
    )  # fmt: skip
    for bad in ({"retention_dead_seconds": -1}, {"retention_dead_seconds": "1"},
                {"retention_canceled_seconds": 10**12}):  # fmt: skip
        assert (await api.patch("/v1/admin/queues/reports", json=bad, headers=h)).status_code == 422
    await api.delete("/v1/admin/queues/reports", headers=h)


def _app(settings: Settings) -> Litestar:
    from services.api.app import create_app

    return create_app(settings)
