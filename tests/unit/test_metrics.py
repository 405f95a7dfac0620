"""Metrics, liveness and the small server that answers for them: no services needed."""

from __future__ import annotations

import asyncio
import re
import socket
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.scheduler.figures import QueueGauges
from shared.db.sweeps import QueueFigures
from shared.errors import ConfigError
from shared.liveness import Liveness
from shared.metrics import MAX_TYPES, OTHER, Metrics
from shared.ops_server import OpsServer
from tests.deploy_contract import exported_metrics


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition, by name and labels."""
    out = {}
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_jobs_are_counted_by_queue_and_type() -> None:
    m = Metrics("api")
    m.each_job("submitted", [("default", "a"), ("default", "a"), ("mail", "b")])
    m.jobs("dead", "mail", "b", 2)
    got = samples(m)
    assert got[("jobq_jobs_submitted_total", (("queue", "default"), ("type", "a")))] == 2
    assert got[("jobq_jobs_submitted_total", (("queue", "mail"), ("type", "b")))] == 1
    assert got[("jobq_jobs_dead_total", (("queue", "mail"), ("type", "b")))] == 2


def test_past_the_cap_new_job_types_count_as_other() -> None:
    m = Metrics("api")
    for i in range(MAX_TYPES + 50):
        m.jobs("submitted", "default", f"t{i}")
    got = samples(m)
    typed = {dict(labels)["type"] for name, labels in got if name == "jobq_jobs_submitted_total"}
    assert len(typed) == MAX_TYPES + 1
    assert got[("jobq_jobs_submitted_total", (("queue", "default"), ("type", OTHER)))] == 50
    m.jobs("submitted", "default", "t0")  # a type seen before the cap keeps its name
    assert samples(m)[("jobq_jobs_submitted_total", (("queue", "default"), ("type", "t0")))] == 2


def test_histograms_and_scrape_time_gauges() -> None:
    m = Metrics("worker")
    m.ran("default", "noop", 0.003)
    m.waited("default", "noop", -1.0)  # a clock step never makes a negative wait
    m.confirmed(0.02)
    held = [1, 2, 3]
    m.gauge("jobq_worker_in_flight_jobs", "held", lambda: len(held))
    got = samples(m)
    assert got[("jobq_job_run_seconds_count", (("queue", "default"), ("type", "noop")))] == 1
    assert got[("jobq_job_queue_wait_seconds_sum", (("queue", "default"), ("type", "noop")))] == 0
    assert got[("jobq_publish_confirm_seconds_count", (("service", "worker"),))] == 1
    assert got[("jobq_worker_in_flight_jobs", ())] == 3
    held.pop()
    assert samples(m)[("jobq_worker_in_flight_jobs", ())] == 2


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_loop_that_does_not_come_round_within_the_deadline_is_stuck() -> None:
    clock = Clock()
    live = Liveness(10, ["deliveries", "heartbeat"], clock)
    clock.now += 8
    live.beat("heartbeat")
    assert live.stuck() == []
    clock.now += 3
    assert live.stuck() == ["deliveries"]
    assert live.age("deliveries") == 11
    live.beat("deliveries")
    assert live.stuck() == []
    m = Metrics("worker")
    m.watch(live)
    ages = samples(m)
    assert ages[("jobq_loop_progress_age_seconds", (("loop", "heartbeat"),))] == 3


async def get(port: int, request: bytes) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def test_the_ops_server_answers_metrics_health_and_readiness() -> None:
    clock = Clock()
    live = Liveness(10, ["tick"], clock)
    m = Metrics("scheduler")
    m.jobs("dead", "default", "x")
    problem: list[str | None] = [None]
    scrapes = []

    async def ready() -> str | None:
        return problem[0]

    async def before_scrape() -> None:
        scrapes.append(1)

    ops = OpsServer(m, live, ready, before_scrape)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    await ops.start("127.0.0.1", port, "JOBQ_SCHEDULER_METRICS_PORT")
    try:
        status, body = await get(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 200
        assert b'jobq_jobs_dead_total{queue="default",type="x"} 1.0' in body
        assert scrapes == [1]
        assert (await get(port, b"GET /health HTTP/1.1\r\n\r\n"))[0] == 200
        clock.now += 11
        status, body = await get(port, b"GET /health HTTP/1.1\r\n\r\n")
        assert (status, body) == (503, b"stuck: tick (11 s)\n")
        assert (await get(port, b"GET /health/ready HTTP/1.1\r\n\r\n"))[0] == 200
        problem[0] = "PostgreSQL: OSError"
        assert await get(port, b"GET /health/ready HTTP/1.1\r\n\r\n") == (
            503, b"PostgreSQL: OSError\n",
        )  # fmt: skip
        assert (await get(port, b"GET /nope HTTP/1.1\r\n\r\n"))[0] == 404
        assert (await get(port, b"POST /metrics HTTP/1.1\r\n\r\n"))[0] == 405
        assert (await get(port, b"GET /metrics HTTP/1.1\r\n" + b"x" * 70_000))[0] == 400
    finally:
        await ops.close()


async def test_a_taken_port_is_one_line_naming_the_setting() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ops = OpsServer(Metrics("worker"), Liveness(10, []), lambda: asyncio.sleep(0, None))
        with pytest.raises(ConfigError, match="JOBQ_WORKER_METRICS_PORT") as refused:
            await ops.start("127.0.0.1", port, "JOBQ_WORKER_METRICS_PORT")
        assert "\n" not in str(refused.value)


def test_with_counting_off_nothing_is_counted() -> None:
    m = Metrics("api", counting=False)
    m.jobs("submitted", "default", "a")
    m.each_job("dead", [("default", "a")])
    m.ran("default", "a", 1.0)
    m.waited("default", "a", 1.0)
    m.submitted_in("single", 0.01)
    m.confirmed(0.01)
    m.leases_expired("default")
    m.republished("default", "lost")
    assert not [k for k, v in samples(m).items() if v and not k[0].endswith("_created")]


class Figures:
    """What ``QueueGauges`` reads, without PostgreSQL or RabbitMQ."""

    async def queue_figures(self) -> list[QueueFigures]:
        return [QueueFigures("default", 1, 2, 3, 4, 5.0, 6)]

    async def dead_letters(self) -> int:
        return 7


async def test_the_documented_metrics_are_those_the_services_export() -> None:
    """docs/operations.md and the README's Operations section list exactly what the code
    registers, with its type."""
    m = Metrics("worker")
    m.watch(Liveness(10, ["tick"]))
    m.gauge("jobq_worker_in_flight_jobs", "held", lambda: 0)
    gauges = QueueGauges(Figures(), Figures(), 1)  # type: ignore[arg-type]
    await gauges.refresh()
    m.registry.register(gauges)
    code = {
        f.name + ("_total" if f.type == "counter" else ""): f.type
        for f in m.registry.collect()
        if f.name.startswith("jobq_")
    }
    assert exported_metrics() == code
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme[readme.index("## Operations") : readme.index("## Deployment")]
    rows = re.findall(r"^\| `(jobq_[a-z0-9_]+)` \| (counter|gauge|histogram) \|", section, re.M)
    assert dict(rows) == code
    assert samples(m)[("jobq_queue_running_jobs", (("queue", "default"),))] == 4
    assert samples(m)[("jobq_dead_letter_messages", ())] == 7
