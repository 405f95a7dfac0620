"""``/v1/dead``: dead letters as a resource: list, show, replay, purge (docs/design.md §8).

A dead letter is a job of the caller's tenant whose status is ``dead`` (PostgreSQL's row, not
the broker's copy in ``jobq.dead``). ``tenant`` names another tenant's, for ``admin`` only.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

import msgspec
from litestar import Request, get, post
from litestar.di import NamedDependency
from litestar.exceptions import NotFoundException, ValidationException
from litestar.params import FromPath, HeaderParameter, JSONBody, QueryParameter

from services.api.auth import requires_scopes
from services.api.cursors import DEAD_CURSOR, dead_cursor, parse_dead_cursor
from services.api.dead_letters import DeadLetters, acting_tenant, dead_filter
from services.api.instants import parse_query
from services.api.openapi import problems
from services.api.schemas import (
    KEY_RULES,
    DeadFilterIn,
    DeadLetterOut,
    JobList,
    JobOut,
    PurgeIn,
    PurgeOut,
    ReplayedOut,
    ReplayIn,
    ReplayOut,
    ReplayRecordOut,
    SkippedOut,
)
from services.api.tokens import Principal
from shared.config import MAX_LIST_LIMIT, NAME_PATTERN, Settings
from shared.credentials import TENANT_PATTERN
from shared.db.dead_letters import DeadLetterStore

AuthRequest = Request[Principal, str, Any]
READ = {"scopes": ["jobs:read"]}
WRITE = {"scopes": ["jobs:write"]}
ERROR_PATTERN = r"^[\x21-\x7e]{1,200}$"


@get("/v1/dead", guards=[requires_scopes], opt=READ, responses=problems(401, 403, 422, 503))
async def list_dead(
    request: AuthRequest,
    dead_store: NamedDependency[DeadLetterStore],
    settings: NamedDependency[Settings],
    limit: Annotated[int, QueryParameter(ge=1, le=MAX_LIST_LIMIT)] = 50,
    cursor: Annotated[str | None, QueryParameter(pattern=DEAD_CURSOR)] = None,
    queue: Annotated[str | None, QueryParameter(pattern=NAME_PATTERN)] = None,
    type: Annotated[str | None, QueryParameter(pattern=NAME_PATTERN)] = None,
    error: Annotated[str | None, QueryParameter(pattern=ERROR_PATTERN)] = None,
    since: Annotated[str | None, QueryParameter(format="date-time")] = None,
    until: Annotated[str | None, QueryParameter(format="date-time")] = None,
    tenant: Annotated[str | None, QueryParameter(pattern=TENANT_PATTERN)] = None,
) -> JobList:
    """Dead jobs, those that died last first; pass ``next_cursor`` back as ``cursor`` for
    more. ``error`` is the error class (``last_error.type``); ``since`` and ``until`` bound
    when they died."""
    if limit > settings.max_list_limit:
        raise ValidationException(detail=f"limit is at most {settings.max_list_limit}")
    where = dead_filter(
        acting_tenant(request.user, tenant),
        DeadFilterIn(queue, type, error, parse_query("since", since), parse_query("until", until)),
    )
    jobs, more = await dead_store.list(
        where,
        limit=limit,
        max_bytes=settings.max_page_bytes,
        after=parse_dead_cursor(cursor) if cursor else None,
    )
    last = jobs[-1] if more else None
    next_cursor = dead_cursor(last.finished_at, last.id) if last is not None else None
    return JobList(items=[JobOut.of(j) for j in jobs], next_cursor=next_cursor)


@get(
    "/v1/dead/{job_id:uuid}",
    guards=[requires_scopes],
    opt=READ,
    responses=problems(401, 403, 404, 422, 503),
)
async def get_dead(
    request: AuthRequest,
    job_id: FromPath[uuid.UUID],
    dead_store: NamedDependency[DeadLetterStore],
    tenant: Annotated[str | None, QueryParameter(pattern=TENANT_PATTERN)] = None,
) -> DeadLetterOut:
    """A dead job (or one replayed from dead) with its full error history and its replays:
    who replayed it, when, and what changed. Any other job is ``404``."""
    job, replays = await dead_store.get(acting_tenant(request.user, tenant), job_id)
    if job is None:
        raise NotFoundException(detail=f"no dead letter {job_id}")
    return DeadLetterOut(
        job=JobOut.of(job),
        replays=[msgspec.convert(r, ReplayRecordOut, from_attributes=True) for r in replays],
    )


@post(
    "/v1/dead/replay",
    guards=[requires_scopes],
    opt=WRITE,
    status_code=200,
    responses=problems(401, 403, 413, 415, 422, 503),
)
async def replay_dead(
    request: AuthRequest,
    data: JSONBody[ReplayIn],
    dead_letters: NamedDependency[DeadLetters],
    idempotency_key: Annotated[
        str | None, HeaderParameter(name="Idempotency-Key", **KEY_RULES)
    ] = None,
) -> ReplayOut:
    """Queue dead jobs again with a fresh attempt budget (``ids``, or a ``filter`` and
    ``limit``), optionally into another declared ``queue`` or (one id) with a new
    ``payload``; each replay is recorded. A job no longer dead is skipped, never replayed
    twice; the same ``Idempotency-Key`` again answers the first result (``repeated``)."""
    outcome = await dead_letters.replay(request.user, data, idempotency_key)
    return ReplayOut(
        action_id=outcome.action_id,
        at=outcome.at,
        repeated=outcome.repeated,
        replayed=[
            ReplayedOut(r.id, r.queue_before, r.queue_after, r.payload_replaced)
            for r in outcome.replayed
        ],
        skipped=[SkippedOut(s.id, s.reason, s.status) for s in outcome.skipped],
    )


@post(
    "/v1/dead/purge",
    guards=[requires_scopes],
    opt=WRITE,
    status_code=200,
    responses=problems(401, 403, 413, 415, 422, 503),
)
async def purge_dead(
    request: AuthRequest, data: JSONBody[PurgeIn], dead_letters: NamedDependency[DeadLetters]
) -> PurgeOut:
    """Delete the dead jobs a filter matches, or with ``dry_run`` (the default) count them.
    A real purge deletes in batches and is recorded with its count."""
    return await dead_letters.purge(request.user, data)


ROUTES = [list_dead, get_dead, replay_dead, purge_dead]
