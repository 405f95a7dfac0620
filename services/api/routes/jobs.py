"""``/v1/jobs``: submit, batch, read, list, cancel, retry."""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import datetime
from typing import Annotated, Any

from litestar import Request, Response, get, post
from litestar.di import NamedDependency
from litestar.exceptions import ClientException, NotFoundException, ValidationException
from litestar.params import FromPath, FromQuery, HeaderParameter, JSONBody, QueryParameter
from opentelemetry import trace

from services.api.auth import requires_scopes
from services.api.schemas import BatchIn, BatchOut, IdempotencyKey, JobIn, JobList, JobOut
from services.api.submission import Dispatcher, new_job, submit
from services.api.tokens import Principal
from shared.config import Settings
from shared.db.store import JobStore
from shared.domain import TERMINAL, JobStatus
from shared.telemetry import traceparent_of

AuthRequest = Request[Principal, str, Any]
READ = {"scopes": ["jobs:read"]}
WRITE = {"scopes": ["jobs:write"]}


def _job_response(job: Any, status: int) -> Response[JobOut]:
    return Response(JobOut.of(job), status_code=status, headers={"Location": f"/v1/jobs/{job.id}"})


@post("/v1/jobs", guards=[requires_scopes], opt=WRITE, status_code=202)
async def submit_job(
    request: AuthRequest,
    data: JSONBody[JobIn],
    store: NamedDependency[JobStore],
    dispatcher: NamedDependency[Dispatcher],
    settings: NamedDependency[Settings],
    idempotency_key: Annotated[
        IdempotencyKey | None, HeaderParameter(name="Idempotency-Key")
    ] = None,
) -> Response[JobOut]:
    """Submit a job: ``202`` with the job; the same ``Idempotency-Key`` again: ``200`` with
    the original job."""
    tp = traceparent_of(trace.get_current_span())
    job = new_job(data, request.user, settings, idempotency_key, tp)
    [(stored, created)] = await submit(store, dispatcher, [job])
    return _job_response(stored, 202 if created else 200)


@post("/v1/jobs/batch", guards=[requires_scopes], opt=WRITE, status_code=202)
async def submit_batch(
    request: AuthRequest,
    data: JSONBody[BatchIn],
    store: NamedDependency[JobStore],
    dispatcher: NamedDependency[Dispatcher],
    settings: NamedDependency[Settings],
) -> BatchOut:
    """Submit up to ``JOBQ_MAX_BATCH_JOBS`` jobs in one transaction."""
    if len(data.jobs) > settings.max_batch_jobs:
        raise ValidationException(
            detail=f"a batch holds at most {settings.max_batch_jobs} jobs, not {len(data.jobs)}"
        )
    keys = [j.idempotency_key for j in data.jobs if j.idempotency_key]
    if len(keys) != len(set(keys)):
        raise ValidationException(detail="idempotency_key repeats within the batch")
    tp = traceparent_of(trace.get_current_span())
    jobs = [new_job(j, request.user, settings, j.idempotency_key, tp) for j in data.jobs]
    results = await submit(store, dispatcher, jobs)
    return BatchOut(items=[JobOut.of(job) for job, _ in results])


@get("/v1/jobs/{job_id:uuid}", guards=[requires_scopes], opt=READ)
async def get_job(
    request: AuthRequest, job_id: FromPath[uuid.UUID], store: NamedDependency[JobStore]
) -> JobOut:
    """One job of the caller's tenant (another tenant's job is 404, like a missing one)."""
    job = await store.get(request.user.tenant, job_id)
    if job is None:
        raise NotFoundException(detail=f"no job {job_id}")
    return JobOut.of(job)


def _cursor(job_id: uuid.UUID) -> str:
    return base64.urlsafe_b64encode(job_id.bytes).decode().rstrip("=")


def _parse_cursor(cursor: str) -> uuid.UUID:
    try:
        return uuid.UUID(bytes=base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, binascii.Error):
        raise ValidationException(detail="cursor is not one this API returned") from None


@get("/v1/jobs", guards=[requires_scopes], opt=READ)
async def list_jobs(
    request: AuthRequest,
    store: NamedDependency[JobStore],
    settings: NamedDependency[Settings],
    limit: Annotated[int, QueryParameter(ge=1, le=500)] = 50,
    cursor: FromQuery[str | None] = None,
    status: FromQuery[JobStatus | None] = None,
    type: FromQuery[str | None] = None,
    queue: FromQuery[str | None] = None,
    created_after: FromQuery[datetime | None] = None,
    created_before: FromQuery[datetime | None] = None,
) -> JobList:
    """The caller's jobs, newest first; pass ``next_cursor`` back as ``cursor`` for more."""
    limit = min(limit, settings.max_list_limit)
    jobs = await store.list(
        request.user.tenant,
        limit=limit,
        before=_parse_cursor(cursor) if cursor else None,
        status=status,
        type=type,
        queue=queue,
        created_after=created_after,
        created_before=created_before,
    )
    next_cursor = _cursor(jobs[-1].id) if len(jobs) == limit else None
    return JobList(items=[JobOut.of(j) for j in jobs], next_cursor=next_cursor)


class Conflict(ClientException):
    status_code = 409


@post("/v1/jobs/{job_id:uuid}/cancel", guards=[requires_scopes], opt=WRITE, status_code=200)
async def cancel_job(
    request: AuthRequest, job_id: FromPath[uuid.UUID], store: NamedDependency[JobStore]
) -> JobOut:
    """Cancel a waiting job now, or ask a running one's worker to stop; terminal: 409."""
    before, job = await store.cancel(request.user.tenant, job_id)
    if job is None or before is None:
        raise NotFoundException(detail=f"no job {job_id}")
    if before in TERMINAL:
        raise Conflict(detail=f"job is already {before}")
    return JobOut.of(job)


@post("/v1/jobs/{job_id:uuid}/retry", guards=[requires_scopes], opt=WRITE, status_code=200)
async def retry_job(
    request: AuthRequest,
    job_id: FromPath[uuid.UUID],
    store: NamedDependency[JobStore],
    dispatcher: NamedDependency[Dispatcher],
) -> JobOut:
    """Queue a dead or canceled job again with a fresh attempt budget; otherwise 409."""
    job, ticket = await store.retry(request.user.tenant, job_id)
    if job is None:
        raise NotFoundException(detail=f"no job {job_id}")
    if ticket is None:
        raise Conflict(
            detail=f"only dead or canceled jobs can be retried; this one is {job.status}"
        )
    await dispatcher.dispatch([ticket])
    return JobOut.of(job)


ROUTES = [submit_job, submit_batch, get_job, list_jobs, cancel_job, retry_job]
