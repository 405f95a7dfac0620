"""``/v1/jobs``: submit, batch, read, wait, list, cancel, retry."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Annotated, Any

from litestar import Request, Response, get, post
from litestar.di import NamedDependency
from litestar.exceptions import NotFoundException, ValidationException
from litestar.openapi import ResponseSpec
from litestar.params import FromPath, FromQuery, HeaderParameter, JSONBody, QueryParameter
from opentelemetry import trace

from services.api.auth import requires_scopes
from services.api.cursors import JOB_CURSOR, job_cursor, parse_job_cursor
from services.api.errors import Conflict
from services.api.instants import parse_query
from services.api.limits import WaiterCap
from services.api.openapi import problems
from services.api.schemas import (
    KEY_RULES,
    BatchIn,
    BatchOut,
    DeliveryList,
    JobIn,
    JobList,
    JobOut,
)
from services.api.submission import Intake
from services.api.tokens import Principal
from shared.config import MAX_LIST_LIMIT, NAME_PATTERN, Settings
from shared.db.callbacks import CallbackStore
from shared.db.jobs import JobStore
from shared.db.sql import JobRow
from shared.domain import TERMINAL, JobStatus
from shared.errors import UndeclaredQueue
from shared.metrics import Metrics
from shared.outbox import Outbox
from shared.telemetry import job_trace

AuthRequest = Request[Principal, str, Any]
READ = {"scopes": ["jobs:read"]}
WRITE = {"scopes": ["jobs:write"]}
MAX_WAIT_SECONDS = 60


def _trace(request: AuthRequest) -> tuple[str, str | None]:
    """The W3C trace context the request's jobs carry (``shared.telemetry.job_trace``); several
    ``tracestate`` fields are one list (W3C trace context §3.3.1)."""
    headers = request.headers
    tracestate = ",".join(headers.getall("tracestate", [])) or None
    return job_trace(trace.get_current_span(), headers.get("traceparent"), tracestate)


def _job_response(job: Any, status: int) -> Response[JobOut]:
    return Response(JobOut.of(job), status_code=status, headers={"Location": f"/v1/jobs/{job.id}"})


@post(
    "/v1/jobs",
    guards=[requires_scopes],
    opt=WRITE,
    status_code=202,
    responses={
        200: ResponseSpec(JobOut, description="The Idempotency-Key was used: the original job"),
        **problems(401, 403, 413, 415, 422, 429, 503),
    },
)
async def submit_job(
    request: AuthRequest,
    data: JSONBody[JobIn],
    intake: NamedDependency[Intake],
    idempotency_key: Annotated[
        str | None, HeaderParameter(name="Idempotency-Key", **KEY_RULES)
    ] = None,
) -> Response[JobOut]:
    """Submit a job: ``202`` with the job; the same ``Idempotency-Key`` again: ``200`` with
    the original job."""
    tp, ts = _trace(request)
    stored, created = await intake.one(data, request.user, idempotency_key, tp, ts)
    return _job_response(stored, 202 if created else 200)


@post(
    "/v1/jobs/batch",
    guards=[requires_scopes],
    opt=WRITE,
    status_code=202,
    responses=problems(401, 403, 413, 415, 422, 429, 503),
)
async def submit_batch(
    request: AuthRequest,
    data: JSONBody[BatchIn],
    intake: NamedDependency[Intake],
) -> BatchOut:
    """Submit up to ``JOBQ_MAX_BATCH_JOBS`` jobs in one transaction, and optionally a job to
    run once when all have finished (``on_complete``)."""
    tp, ts = _trace(request)
    results = await intake.many(data.jobs, request.user, tp, ts, data.on_complete)
    items = [JobOut.of(job) for job, _ in results]
    if data.on_complete is None:
        return BatchOut(items=items)
    return BatchOut(items=items[:-1], on_complete=items[-1])


@get(
    "/v1/jobs/{job_id:uuid}",
    guards=[requires_scopes],
    opt=READ,
    responses=problems(401, 403, 404, 503),
)
async def get_job(
    request: AuthRequest, job_id: FromPath[uuid.UUID], store: NamedDependency[JobStore]
) -> JobOut:
    """One job of the caller's tenant (another tenant's job is 404, like a missing one)."""
    return JobOut.of(await _own_job(store, request.user.tenant, job_id))


async def _own_job(store: JobStore, tenant: str, job_id: uuid.UUID) -> JobRow:
    job = await store.get(tenant, job_id)
    if job is None:
        raise NotFoundException(detail=f"no job {job_id}")
    return job


@get(
    "/v1/jobs/{job_id:uuid}/wait",
    guards=[requires_scopes],
    opt=READ,
    responses=problems(401, 403, 404, 422, 429, 503),
)
async def wait_job(
    request: AuthRequest,
    job_id: FromPath[uuid.UUID],
    store: NamedDependency[JobStore],
    waiters: NamedDependency[WaiterCap],
    wait: Annotated[float, QueryParameter(name="timeout", ge=0, le=MAX_WAIT_SECONDS)] = 30,
) -> JobOut:
    """Long-poll: the job once it is terminal, or as it is after ``timeout`` seconds.

    Each process holds at most ``JOBQ_MAX_WAITERS`` long-polls open,
    ``JOBQ_MAX_WAITERS_PER_TENANT`` per tenant and ``JOBQ_MAX_WAITERS_PER_CLIENT`` per client;
    beyond that, ``429``. A poll whose client hangs up ends at once, freeing its slot.
    """
    with waiters.slot(request.user.client_id, request.user.tenant):
        gone = asyncio.ensure_future(_disconnect(request))
        try:
            deadline = time.monotonic() + wait
            pause = 0.05
            while True:
                job = await _own_job(store, request.user.tenant, job_id)
                left = deadline - time.monotonic()
                if job.status in TERMINAL or left <= 0 or gone.done():
                    return JobOut.of(job)
                await asyncio.wait([gone], timeout=min(pause, left))
                pause = min(pause * 1.5, 1.0)
        finally:
            gone.cancel()


async def _disconnect(request: AuthRequest) -> None:
    """Returns when the client hangs up."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


@get("/v1/jobs", guards=[requires_scopes], opt=READ, responses=problems(401, 403, 422, 503))
async def list_jobs(
    request: AuthRequest,
    store: NamedDependency[JobStore],
    settings: NamedDependency[Settings],
    limit: Annotated[int, QueryParameter(ge=1, le=MAX_LIST_LIMIT)] = 50,
    cursor: Annotated[str | None, QueryParameter(pattern=JOB_CURSOR)] = None,
    status: FromQuery[JobStatus | None] = None,
    type: Annotated[str | None, QueryParameter(pattern=NAME_PATTERN)] = None,
    queue: Annotated[str | None, QueryParameter(pattern=NAME_PATTERN)] = None,
    created_after: Annotated[str | None, QueryParameter(format="date-time")] = None,
    created_before: Annotated[str | None, QueryParameter(format="date-time")] = None,
) -> JobList:
    """The caller's jobs, newest first; pass ``next_cursor`` back as ``cursor`` for more.

    A page ends early, with a cursor, once its jobs' JSON passes ``JOBQ_MAX_PAGE_BYTES``.
    """
    if limit > settings.max_list_limit:
        raise ValidationException(detail=f"limit is at most {settings.max_list_limit}")
    jobs, more = await store.list(
        request.user.tenant,
        limit=limit,
        max_bytes=settings.max_page_bytes,
        before=parse_job_cursor(cursor) if cursor else None,
        status=status,
        type=type,
        queue=queue,
        created_after=parse_query("created_after", created_after),
        created_before=parse_query("created_before", created_before),
    )
    next_cursor = job_cursor(jobs[-1].id) if more else None
    return JobList(items=[JobOut.of(j) for j in jobs], next_cursor=next_cursor)


@post(
    "/v1/jobs/{job_id:uuid}/cancel",
    guards=[requires_scopes],
    opt=WRITE,
    status_code=200,
    responses=problems(401, 403, 404, 409, 503),
)
async def cancel_job(
    request: AuthRequest,
    job_id: FromPath[uuid.UUID],
    store: NamedDependency[JobStore],
    metrics: NamedDependency[Metrics],
) -> JobOut:
    """Cancel a waiting job now, or ask a running one's worker to stop; terminal: 409."""
    before, job = await store.cancel(request.user.tenant, job_id)
    if job is None or before is None:
        raise NotFoundException(detail=f"no job {job_id}")
    if before in TERMINAL:
        raise Conflict(detail=f"job is already {before}")
    if job.status == JobStatus.CANCELED:  # a running one ends canceled at its worker
        metrics.jobs("canceled", job.queue, job.type)
    return JobOut.of(job)


@post(
    "/v1/jobs/{job_id:uuid}/retry",
    guards=[requires_scopes],
    opt=WRITE,
    status_code=200,
    responses=problems(401, 403, 404, 409, 503),
)
async def retry_job(
    request: AuthRequest,
    job_id: FromPath[uuid.UUID],
    store: NamedDependency[JobStore],
    outbox: NamedDependency[Outbox],
) -> JobOut:
    """Queue a dead or canceled job again with a fresh attempt budget; otherwise 409."""
    try:
        job, ticket = await store.retry(request.user.tenant, job_id)
    except UndeclaredQueue as exc:
        raise Conflict(detail=f"{exc}: declare it again to retry this job") from None
    if job is None:
        raise NotFoundException(detail=f"no job {job_id}")
    if ticket is None:
        raise Conflict(
            detail=f"only dead or canceled jobs can be retried; this one is {job.status}"
        )
    await outbox.send([ticket], "retried")
    return JobOut.of(job)


@get(
    "/v1/jobs/{job_id:uuid}/deliveries",
    guards=[requires_scopes],
    opt=READ,
    responses=problems(401, 403, 404, 422, 503),
)
async def list_deliveries(
    request: AuthRequest,
    job_id: FromPath[uuid.UUID],
    callbacks: NamedDependency[CallbackStore],
    limit: Annotated[int, QueryParameter(ge=1, le=MAX_LIST_LIMIT)] = 100,
) -> DeliveryList:
    """The attempts to deliver the job to its ``callback_url``, oldest first (the newest
    ``limit``); another tenant's job is 404, like a missing one."""
    found = await callbacks.deliveries(request.user.tenant, job_id, limit)
    if found is None:
        raise NotFoundException(detail=f"no job {job_id}")
    return DeliveryList(items=found)


ROUTES = [
    submit_job, submit_batch, get_job, wait_job, list_jobs, cancel_job, retry_job,
    list_deliveries,
]  # fmt: skip
