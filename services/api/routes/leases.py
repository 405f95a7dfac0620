"""HTTP workers (docs/design.md §5): ``POST /v1/leases`` takes jobs of the caller's tenant;
``/v1/jobs/{id}/heartbeat``, ``/complete`` and ``/fail`` name the lease id it gave. A lease
that ran out or was never this one is ``409``; another tenant's job ``404``, like a missing
one. The fencing is the AMQP worker's: every write names the lease and checks it has not run
out, in the same statement."""

from __future__ import annotations

import contextlib
import uuid
from typing import Any, NoReturn

import msgspec
from litestar import Request, Response, post
from litestar.di import NamedDependency
from litestar.exceptions import NotFoundException, ValidationException
from litestar.openapi import ResponseSpec
from litestar.params import FromPath, JSONBody

from services.api.auth import requires_scopes
from services.api.errors import Conflict
from services.api.leasing import LeaseHub
from services.api.limits import WaiterCap
from services.api.openapi import problems
from services.api.schemas import (
    CompleteIn,
    FailIn,
    HeartbeatIn,
    HeartbeatOut,
    JobOut,
    LeasedJob,
    LeaseIn,
    LeaseList,
)
from services.api.tokens import Principal
from shared.config import Settings
from shared.db.jobs import JobStore
from shared.db.leases import Claimed, LeaseStore
from shared.domain import decide_failure
from shared.metrics import FAILURE_EVENTS, Metrics
from shared.outbox import Outbox

AuthRequest = Request[Principal, str, Any]
WORK = {"scopes": ["jobs:work"]}


def _leased(job: Claimed) -> LeasedJob:
    assert job.lease_expires_at is not None
    return LeasedJob(
        id=job.id, type=job.type, queue=job.queue, priority=job.priority, payload=job.payload,
        attempt=job.attempts, max_attempts=job.max_attempts, timeout_seconds=job.timeout_seconds,
        lease_id=job.lease_id, lease_expires_at=job.lease_expires_at, traceparent=job.traceparent,
        tenant=job.tenant, tracestate=job.tracestate,
    )  # fmt: skip


@post(
    "/v1/leases",
    guards=[requires_scopes],
    opt=WORK,
    status_code=200,
    responses={
        204: ResponseSpec(None, description="No job came within `wait_seconds`"),
        **problems(401, 403, 413, 415, 422, 429, 503),
    },
)
async def lease_jobs(
    request: AuthRequest,
    data: JSONBody[LeaseIn],
    hub: NamedDependency[LeaseHub],
    waiters: NamedDependency[WaiterCap],
    settings: NamedDependency[Settings],
    metrics: NamedDependency[Metrics],
) -> Response[LeaseList | None]:
    """Lease up to ``max_jobs`` due jobs of the caller's tenant, waiting up to
    ``wait_seconds`` for one (a waiting lease counts towards the long-poll caps)."""
    wait = min(data.wait_seconds, settings.lease_max_wait_seconds)
    user = request.user
    with waiters.slot(user.client_id, user.tenant) if wait > 0 else contextlib.nullcontext():
        jobs = await hub.lease(
            user.tenant, data.queues, data.types, data.max_jobs,
            data.lease_seconds or settings.lease_seconds, wait,
        )  # fmt: skip
    if not jobs:
        return Response(None, status_code=204)
    for j in jobs:
        metrics.jobs("started", j.queue, j.type)
        metrics.waited(j.queue, j.type, j.waited_seconds or 0.0)
    return Response(LeaseList(items=[_leased(j) for j in jobs]), status_code=200)


def held_job_route(verb: str) -> post:
    """``POST /v1/jobs/{id}/<verb>`` for the holder of a lease."""
    return post(
        f"/v1/jobs/{{job_id:uuid}}/{verb}",
        guards=[requires_scopes],
        opt=WORK,
        status_code=200,
        responses=problems(401, 403, 404, 409, 413, 415, 422, 503),
    )


async def _held(
    store: JobStore, leases: LeaseStore, tenant: str, job_id: uuid.UUID, lease_id: uuid.UUID
) -> Claimed:
    """The job under this lease, or why not: 404 (not the tenant's), 409 (lease gone)."""
    held = await leases.held(tenant, job_id, lease_id)
    if held is None:
        await _refuse(store, tenant, job_id, lease_id)
    return held


async def _refuse(store: JobStore, tenant: str, job_id: uuid.UUID, lease_id: uuid.UUID) -> NoReturn:
    """Why this lease cannot write: 404 if the job is not the tenant's, else 409."""
    job = await store.get(tenant, job_id)
    if job is None:
        raise NotFoundException(detail=f"no job {job_id}")
    raise Conflict(detail=f"lease {lease_id} does not hold job {job_id} (it is {job.status})")


@held_job_route("heartbeat")
async def heartbeat(
    request: AuthRequest,
    job_id: FromPath[uuid.UUID],
    data: JSONBody[HeartbeatIn],
    store: NamedDependency[JobStore],
    leases: NamedDependency[LeaseStore],
    settings: NamedDependency[Settings],
) -> HeartbeatOut:
    """Extend the lease (and record the job's ``progress``); ``cancel_requested`` says the job
    was canceled: stop, then fail it."""
    seconds = data.lease_seconds or settings.lease_seconds
    progress = None if data.progress is None else msgspec.json.encode(data.progress).decode()
    tenant = request.user.tenant
    canceled = await leases.heartbeat_held(tenant, job_id, data.lease_id, seconds, progress)
    if canceled is None:
        await _refuse(store, tenant, job_id, data.lease_id)
    return HeartbeatOut(lease_seconds=seconds, cancel_requested=bool(canceled))


@held_job_route("complete")
async def complete(
    request: AuthRequest,
    job_id: FromPath[uuid.UUID],
    data: JSONBody[CompleteIn],
    store: NamedDependency[JobStore],
    leases: NamedDependency[LeaseStore],
    metrics: NamedDependency[Metrics],
) -> JobOut:
    """Record the job's success with its ``result`` (any JSON): once, under this lease."""
    result = msgspec.json.encode(data.result).decode()
    if "\\u0000" in result:  # PostgreSQL's jsonb cannot hold it
        raise ValidationException(detail="result holds a NUL character (\\u0000)")
    job = await leases.complete_held(request.user.tenant, job_id, data.lease_id, result)
    if job is None:
        await _refuse(store, request.user.tenant, job_id, data.lease_id)
    metrics.jobs("succeeded", job.queue, job.type)
    return JobOut.of(job)


@held_job_route("fail")
async def fail(
    request: AuthRequest,
    job_id: FromPath[uuid.UUID],
    data: JSONBody[FailIn],
    store: NamedDependency[JobStore],
    leases: NamedDependency[LeaseStore],
    outbox: NamedDependency[Outbox],
    settings: NamedDependency[Settings],
    metrics: NamedDependency[Metrics],
) -> JobOut:
    """Record a failed attempt: ``retrying`` after a backoff while attempts remain and it is
    ``retryable``, else ``dead`` (and on the dead-letter queue); a canceled job ends canceled."""
    job = await _held(store, leases, request.user.tenant, job_id, data.lease_id)
    decision = decide_failure(
        job.attempts, job.max_attempts, permanent=not data.retryable,
        base=job.retry_backoff_seconds or settings.retry_backoff_seconds,
        cap=job.retry_backoff_max_seconds or settings.retry_backoff_max_seconds,
    )  # fmt: skip
    error = {"type": data.error_type, "message": data.message.replace("\x00", "")}
    failure = await leases.fail(job, decision.status, decision.delay_seconds, error)
    if failure is None:  # the lease ran out before the write: nothing written
        raise Conflict(detail=f"lease {data.lease_id} does not hold job {job_id}")
    metrics.jobs(FAILURE_EVENTS[failure.status], job.queue, job.type)
    if failure.dead_letter is not None:
        await outbox.send([failure.dead_letter])
    after = await store.get(request.user.tenant, job_id)
    assert after is not None
    return JobOut.of(after)


ROUTES = [lease_jobs, heartbeat, complete, fail]
