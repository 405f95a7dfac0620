"""Metrics against real PostgreSQL and RabbitMQ: the per-queue figures the scheduler reads, the
scheduler's and the API's counters. (tests/e2e/test_prometheus.py has a real Prometheus scrape
the real processes.)"""

from __future__ import annotations

import asyncio

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from prometheus_client.parser import text_string_to_metric_families

from services.scheduler.figures import QueueGauges
from services.scheduler.loop import Scheduler
from shared.config import Settings
from shared.db.leases import LeaseStore
from shared.db.submits import SubmitStore
from shared.db.sweeps import QueueFigures, SweepStore
from shared.db.tickets import TicketStore
from shared.domain import JobStatus
from shared.messaging import Broker
from shared.metrics import Metrics
from tests.conftest import Bearer
from tests.integration.test_worker import new_job, ticket

pytestmark = pytest.mark.integration


def values(metrics: Metrics, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    found = {}
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for s in family.samples:
            if s.name == name:
                found[tuple(sorted(s.labels.items()))] = s.value
    return found


async def test_queue_figures_count_each_queue_by_what_its_jobs_wait_for(
    submits: SubmitStore, leases: LeaseStore, broker: Broker, scheduler: Scheduler
) -> None:
    ready = [row for row, _ in await submits.insert([new_job() for _ in range(4)])]
    await submits.insert([new_job(delay_seconds=3600.0) for _ in range(2)])
    await submits.insert([new_job(queue="slow")])
    await leases.claim([ready[0].id], lease_seconds=60)  # running
    [failing], _ = await leases.claim([ready[1].id], lease_seconds=60)
    await leases.fail(failing, JobStatus.RETRYING, 3600, {"type": "X", "message": "m"})
    await TicketStore(submits.engine).mark_published([ticket(ready[2])])
    await asyncio.sleep(0.05)  # the oldest ready job has been due a while

    by_queue = {f.queue: f for f in await SweepStore(submits.engine).queue_figures()}
    default = by_queue["default"]
    assert (default.ready, default.delayed, default.retrying, default.running) == (2, 2, 1, 1)
    assert default.unconfirmed == 1  # of the two ready jobs, one ticket's confirm is recorded
    assert 0.05 <= default.oldest_ready_seconds < 30
    assert by_queue["slow"] == QueueFigures(
        "slow", 1, 0, 0, 0, by_queue["slow"].oldest_ready_seconds, 1
    )
    # A queue with no jobs is there, all zeros.
    assert all(
        (f.ready, f.delayed, f.retrying, f.running, f.oldest_ready_seconds) == (0, 0, 0, 0, 0)
        for name, f in by_queue.items() if name not in ("default", "slow")
    )  # fmt: skip

    gauges = QueueGauges(SweepStore(submits.engine), broker, timeout=5)
    metrics = Metrics("scheduler")
    metrics.registry.register(gauges)
    await gauges.refresh()
    assert values(metrics, "jobq_queue_ready_jobs")[(("queue", "default"),)] == 2
    assert values(metrics, "jobq_queue_retrying_jobs")[(("queue", "default"),)] == 1
    assert values(metrics, "jobq_dead_letter_messages") == {(): 0}


async def test_the_scheduler_counts_expired_leases_and_what_they_became(
    submits: SubmitStore, leases: LeaseStore, scheduler: Scheduler
) -> None:
    rows = [r for r, _ in await submits.insert([new_job(max_attempts=1), new_job()])]
    await leases.claim([r.id for r in rows], lease_seconds=0.1)
    await asyncio.sleep(0.3)
    assert (await scheduler.tick())["expired"] == 2
    m = scheduler.metrics
    assert values(m, "jobq_leases_expired_total") == {(("queue", "default"),): 2}
    assert values(m, "jobq_jobs_dead_total") == {(("queue", "default"), ("type", "noop")): 1}


async def test_the_api_counts_submits_and_serves_metrics_without_a_token(
    settings: Settings, clean: None, bearer: Bearer
) -> None:
    from services.api.app import create_app

    metrics = Metrics("api")
    app: Litestar = create_app(settings, metrics=metrics)
    async with AsyncTestClient(app=app) as api:
        h = await bearer()
        for _ in range(3):
            assert (await api.post("/v1/jobs", json={"type": "noop"}, headers=h)).status_code == 202
        batch = {"jobs": [{"type": "echo", "queue": "slow"}] * 5}
        assert (await api.post("/v1/jobs/batch", json=batch, headers=h)).status_code == 202
        scraped = await api.get("/metrics")
    assert scraped.status_code == 200
    assert scraped.headers["content-type"].startswith("text/plain")
    text = scraped.text
    assert 'jobq_jobs_submitted_total{queue="default",type="noop"} 3.0' in text
    assert 'jobq_jobs_submitted_total{queue="slow",type="echo"} 5.0' in text
    assert 'jobq_submit_seconds_count{route="single"} 3.0' in text
    assert 'jobq_submit_seconds_count{route="batch"} 1.0' in text
    assert "acme" not in text  # no tenant is named
