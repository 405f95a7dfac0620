"""What an operator reads of jobq's messages in RabbitMQ's console: which job, type, tenant and
attempt a ticket is for, its trace context, and on a dead letter why the job died."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import aio_pika
import httpx
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from services.api.app import create_app
from services.scheduler.loop import Scheduler
from shared.config import Settings
from shared.db.jobs import JobStore
from shared.domain import JobStatus
from shared.messaging import Broker
from tests.conftest import Bearer
from tests.integration.conftest import StartWorker, ticking, wait_for
from tests.integration.test_worker import final, new_job, submit

pytestmark = pytest.mark.integration

#: The console's own API (the management plugin), as test_queues.py reaches it.
MANAGEMENT = "http://127.0.0.1:15672"
CALLER = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
STATE = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"


async def console_get(queue: str, count: int = 1) -> list[dict[str, Any]]:
    """What the console's "Get messages" shows of ``queue`` (the messages stay queued)."""
    async with httpx.AsyncClient(auth=("guest", "guest"), timeout=5) as client:
        r = await client.post(
            f"{MANAGEMENT}/api/queues/{quote('/', safe='')}/{queue}/get",
            json={"count": count, "ackmode": "ack_requeue_true", "encoding": "auto"},
        )
    r.raise_for_status()
    messages: list[dict[str, Any]] = r.json()
    return messages


async def submitted(api: AsyncTestClient[Litestar], h: dict[str, str]) -> str:
    r = await api.post(
        "/v1/jobs",
        json={"type": "mail.send", "payload": {"to": "x"}},
        headers={**h, "traceparent": CALLER, "tracestate": STATE},
    )
    assert r.status_code == 202, r.text
    job_id: str = r.json()["id"]
    return job_id


async def test_a_ticket_says_which_job_type_tenant_and_attempt_it_is_for(
    api: AsyncTestClient[Litestar], bearer: Bearer, broker: Broker
) -> None:
    job_id = await submitted(api, await bearer("acme"))
    queue = broker.topology.queue_name("default")
    [message] = await wait_for(lambda: console_get(queue))
    headers = message["properties"]["headers"]
    assert headers["x-jobq-job-id"] == job_id == message["properties"]["message_id"]
    assert (headers["x-jobq-type"], headers["x-jobq-tenant"], headers["x-jobq-attempt"]) == (
        "mail.send", "acme", 1,
    )  # fmt: skip
    # Traced (this API has a tracer provider): the ticket names its publish span, in the trace
    # the caller began, with the caller's tracestate.
    assert headers["traceparent"].split("-")[1] == CALLER.split("-")[1]
    assert headers["traceparent"] != CALLER
    assert headers["tracestate"] == STATE
    assert json.loads(message["payload"]) == {"job_id": job_id, "type": "mail.send", "attempt": 0}


async def test_untraced_a_ticket_still_carries_the_callers_trace_and_tracestate(
    settings: Settings, bearer: Bearer, broker: Broker
) -> None:
    async with AsyncTestClient(app=create_app(settings)) as api:
        job_id = await submitted(api, await bearer("acme"))
    ch = await broker.connection.channel()  # type: ignore[union-attr]
    q = await ch.get_queue(broker.topology.queue_name("default"), ensure=False)
    message: aio_pika.abc.AbstractIncomingMessage | None = await wait_for(
        lambda: q.get(no_ack=True, fail=False)
    )
    await ch.close()
    assert message is not None
    assert message.headers["x-jobq-job-id"] == job_id
    assert str(message.headers["traceparent"]).split("-")[1] == CALLER.split("-")[1]
    assert message.headers["tracestate"] == STATE


async def test_a_dead_letter_says_why_the_job_died_and_the_errors_class(
    store: JobStore, broker: Broker, start_worker: StartWorker, scheduler: Scheduler
) -> None:
    await start_worker()
    async with ticking(scheduler):
        job = await submit(store, broker, new_job("fail", {"message": "boom"}, max_attempts=2))
        await final(store, job.id, JobStatus.DEAD)
    [letter] = await wait_for(lambda: console_get(broker.topology.dead_queue))
    headers = letter["properties"]["headers"]
    assert headers["x-jobq-job-id"] == str(job.id)
    assert (headers["x-jobq-tenant"], headers["x-jobq-queue"], headers["x-jobq-attempt"]) == (
        "acme", "default", 2,
    )  # fmt: skip
    assert headers["x-jobq-error-type"] == "HandlerError"
    assert headers["x-jobq-reason"] == "HandlerError: boom"
