"""The api, a worker and the scheduler as processes, exporting to an OTLP/HTTP receiver the test
runs: what they export forms one trace per job, every hop in it.

A job that fails once and succeeds is submitted with a caller's ``traceparent`` and
``tracestate``; another is delayed, so the scheduler publishes it. Their traces must hold the
submit, its statement and publish, each delivery and attempt, the scheduler's publishes, and the
statements the attempts made, parented and linked as docs/design.md §6 says.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from shared.config import Settings
from shared.db.clients import ClientStore
from shared.db.engine import make_engine
from tests.chaos.cluster import Cluster
from tests.conftest import TEST_SECRET
from tests.e2e.otlp import Received, Receiver, attributes, receiving
from tests.services import create_database, delete_broker_objects, drop_database

pytestmark = pytest.mark.e2e

CALLER_SPAN = "b7ad6b7169203331"
STATE = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"
SERVER, CLIENT, PRODUCER, CONSUMER = (
    Span.SPAN_KIND_SERVER, Span.SPAN_KIND_CLIENT, Span.SPAN_KIND_PRODUCER, Span.SPAN_KIND_CONSUMER,
)  # fmt: skip


@dataclass
class Traced:
    url: str
    prefix: str
    receiver: Receiver
    token: str


@pytest.fixture(scope="module")
async def traced(
    database_url: str, amqp_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Traced]:
    url = await create_database(database_url, "jobq_traces")
    prefix = f"jobqtrace{secrets.token_hex(3)}"
    log_dir: Path = tmp_path_factory.mktemp("traces")
    engine = make_engine(Settings(database_url=url), "tests", pool_size=1)
    with receiving() as (endpoint, receiver):
        cluster = Cluster(
            url, amqp_url, prefix, TEST_SECRET, log_dir,
            overrides={
                "JOBQ_HANDLERS": "tests.e2e.trace_handlers",
                "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
                "OTEL_BSP_SCHEDULE_DELAY": "100",
                "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=trace-test",
            },
        )  # fmt: skip
        try:
            client, secret = await ClientStore(engine).register(
                "traces", "acme", ["jobs:write", "jobs:read"]
            )
            await cluster.up(workers=1, schedulers=1)
            async with httpx.AsyncClient(base_url=cluster.url, timeout=10) as http:
                r = await http.post(
                    "/v1/auth/token",
                    data={"grant_type": "client_credentials"},
                    auth=(str(client.id), secret),
                )
            r.raise_for_status()
            yield Traced(cluster.url, prefix, receiver, r.json()["access_token"])
        finally:
            await asyncio.to_thread(cluster.stop)
            await engine.dispose()
            await drop_database(url)
            await delete_broker_objects(amqp_url, prefix, ["default"])


async def run(traced: Traced, job: dict[str, object], headers: dict[str, str]) -> dict[str, str]:
    """Submit ``job`` and wait until it has succeeded; the job as it ended."""
    auth = {"Authorization": f"Bearer {traced.token}"}
    async with httpx.AsyncClient(base_url=traced.url, timeout=30) as http:
        r = await http.post("/v1/jobs", json=job, headers={**auth, **headers})
        assert r.status_code == 202, r.text
        done = await http.get(
            f"/v1/jobs/{r.json()['id']}/wait", params={"timeout": 20}, headers=auth
        )
    ended: dict[str, str] = done.json()
    assert ended["status"] == "succeeded", ended
    return ended


async def trace_of(
    receiver: Receiver, trace_id: str, complete: Callable[[list[Received]], bool]
) -> list[Received]:
    """The spans of ``trace_id`` once ``complete`` says all it needs has arrived."""
    for _ in range(200):
        spans = [s for s in receiver.spans() if s.span.trace_id.hex() == trace_id]
        if complete(spans):
            return spans
        await asyncio.sleep(0.1)
    names = sorted(f"{s.service}: {s.span.name}" for s in spans)
    raise AssertionError(f"trace {trace_id} incomplete after 20 s: {names}")


def one(spans: list[Received], **where: object) -> Received:
    [found] = matching(spans, **where)
    return found


def matching(spans: list[Received], **where: object) -> list[Received]:
    def fits(s: Received) -> bool:
        checks = {
            "service": s.service, "kind": s.span.kind, "name": s.span.name,
            "parent": s.span.parent_span_id,
        }  # fmt: skip
        return all(
            s.span.name.startswith(str(want)) if key == "prefix" else checks[key] == want
            for key, want in where.items()
        )

    return [s for s in spans if fits(s)]


def linked(span: Received, why: str) -> bytes:
    """The span id ``span`` links as ``why`` (``jobq.link``)."""
    [link] = [ln for ln in span.span.links if attributes(ln.attributes).get("jobq.link") == why]
    return bytes(link.span_id)


def is_query_under(spans: list[Received], parent: Received) -> bool:
    return any(
        s.span.kind == CLIENT and s.attributes.get("db.system") == "postgresql"
        for s in matching(spans, parent=parent.span.span_id)
    )


async def test_a_retried_job_is_one_trace_from_the_callers_submit_to_its_last_attempt(
    traced: Traced,
) -> None:
    trace_id = secrets.token_hex(16)
    caller = {"traceparent": f"00-{trace_id}-{CALLER_SPAN}-01", "tracestate": STATE}
    job = await run(traced, {"type": "traced.flaky"}, caller)
    assert job["trace_id"] == trace_id

    def complete(spans: list[Received]) -> bool:
        """Each process exports on its own: the scheduler's publish ends at its confirm, which
        may come after the attempt it led to."""
        runs = matching(spans, name="jobq.run traced.flaky")
        return (
            len(runs) == 2
            and all(is_query_under(spans, r) for r in runs)
            and len(matching(spans, name=f"{traced.prefix}.jobs receive")) == 2
            and bool(matching(spans, kind=PRODUCER, service="jobq-scheduler"))
            and bool(matching(spans, kind=PRODUCER, service="jobq-api"))
            and bool(matching(spans, kind=SERVER))
        )

    spans = await trace_of(traced.receiver, trace_id, complete)
    assert {s.service for s in spans} == {"jobq-api", "jobq-worker", "jobq-scheduler"}
    assert {s.resource["deployment.environment"] for s in spans} == {"trace-test"}

    # The API joins the caller's trace: its request, the INSERT under it, the publish.
    submit = one(spans, service="jobq-api", kind=SERVER, prefix="POST /v1/jobs")
    assert submit.span.parent_span_id.hex() == CALLER_SPAN
    assert submit.span.trace_state == STATE
    assert is_query_under(spans, submit)
    publish = one(spans, service="jobq-api", kind=PRODUCER, parent=submit.span.span_id)
    assert publish.span.name == f"publish {traced.prefix}.jobs"
    assert publish.attributes["messaging.message.id"] == job["id"]

    # Both attempts are children of the submit, in the caller's trace with its tracestate, each
    # with its statements under it; the first failed.
    first, second = sorted(
        matching(spans, service="jobq-worker", name="jobq.run traced.flaky"),
        key=lambda s: s.attributes["jobq.attempt"],
    )
    for attempt in (first, second):
        assert attempt.span.parent_span_id == submit.span.span_id
        assert attempt.span.trace_state == STATE
        assert attempt.attributes["jobq.job_id"] == job["id"]
    assert first.span.status.code == Status.STATUS_CODE_ERROR
    assert first.attributes["error.type"] == "RuntimeError"

    # The first attempt's ticket was the API's: delivered (aio-pika's span, a child of the
    # publish, carrying the tracestate the ticket's headers bring) and linked by the attempt.
    delivery = one(spans, service="jobq-worker", kind=CONSUMER, parent=publish.span.span_id)
    assert delivery.span.trace_state == STATE
    assert linked(first, "delivery") == delivery.span.span_id

    # The retry: the scheduler published the job again once its backoff was over, in the
    # job's trace and linked to its tick; the second attempt links the first, and its delivery.
    again = one(spans, service="jobq-scheduler", kind=PRODUCER)
    assert again.span.parent_span_id == submit.span.span_id
    assert again.attributes["jobq.publish.reason"] == "due"
    assert linked(second, "previous_attempt") == first.span.span_id
    redelivery = one(spans, service="jobq-worker", kind=CONSUMER, parent=again.span.span_id)
    assert linked(second, "delivery") == redelivery.span.span_id
    tick = linked(again, "published_under")
    assert any(
        s.span.span_id == tick and s.span.name == "jobq.scheduler.tick"
        for s in traced.receiver.spans()
    )


async def test_a_delayed_job_is_published_by_the_scheduler_in_the_jobs_trace(
    traced: Traced,
) -> None:
    job = await run(traced, {"type": "noop", "delay_seconds": 1}, {})

    def complete(spans: list[Received]) -> bool:
        return all(
            matching(spans, **where)
            for where in (
                {"name": "jobq.run noop"}, {"name": f"{traced.prefix}.jobs receive"},
                {"kind": SERVER},
                {"kind": PRODUCER, "service": "jobq-scheduler"},
            )
        )  # fmt: skip

    spans = await trace_of(traced.receiver, job["trace_id"], complete)
    submit = one(spans, service="jobq-api", kind=SERVER, prefix="POST /v1/jobs")
    assert not submit.span.parent_span_id  # no caller's context: the API began the trace
    assert not matching(spans, service="jobq-api", kind=PRODUCER)  # not due: not published
    due = one(spans, service="jobq-scheduler", kind=PRODUCER, parent=submit.span.span_id)
    assert due.attributes["jobq.publish.reason"] == "due"
    attempt = one(spans, service="jobq-worker", name="jobq.run noop")
    assert attempt.span.parent_span_id == submit.span.span_id
    delivery = one(spans, service="jobq-worker", kind=CONSUMER, parent=due.span.span_id)
    assert linked(attempt, "delivery") == delivery.span.span_id
    assert {attributes(ln.attributes)["jobq.link"] for ln in attempt.span.links} == {"delivery"}
