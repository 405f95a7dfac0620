"""``/v1/schedules``: a tenant's cron schedules (``jobs:write`` to change, ``jobs:read`` to
read). The scheduler fires them (docs/design.md §9); here they are checked and stored.

A schedule's job is checked as a submit's body is (``services.api.submission.new_job``), so
no tick can make a job a submit would refuse; a bad cron expression or an unknown time zone
is ``422`` naming it. Another tenant's schedule is ``404``, like a missing one.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
from litestar import Request, Response, delete, get, patch, post
from litestar.di import NamedDependency
from litestar.exceptions import NotFoundException, ValidationException
from litestar.params import FromPath, JSONBody, QueryParameter

from services.api.auth import requires_scopes
from services.api.errors import Conflict
from services.api.openapi import problems
from services.api.schemas import JobIn, ScheduleIn, ScheduleList, ScheduleOut, SchedulePatch
from services.api.submission import DEFAULT_QUEUE, Intake, new_job
from services.api.tokens import Principal
from shared import cron
from shared.config import MAX_LIST_LIMIT, NAME_PATTERN, Settings
from shared.db.models import Schedule
from shared.db.queues import QueueStore
from shared.db.schedules import ScheduleStore
from shared.ids import uuid7

AuthRequest = Request[Principal, str, Any]
READ = {"scopes": ["jobs:read"]}
WRITE = {"scopes": ["jobs:write"]}
PATH = "/v1/schedules/{schedule_id:uuid}"


async def _template(
    job: JobIn, principal: Principal, intake: Intake, queues: QueueStore
) -> dict[str, Any]:
    """The job a tick submits, checked as a submit would be (with strict types, its type's
    schema and defaults too), with its queue named."""
    if job.run_at is not None or job.delay_seconds is not None:
        raise ValidationException(detail="a schedule's job runs at its tick: no run_at or delay")
    if job.depends_on:
        raise ValidationException(detail="a schedule's job cannot wait for other jobs")
    if job.callback_url is not None:
        raise ValidationException(detail="a schedule's job takes no callback_url (not yet)")
    job = await intake.typed(job, principal.tenant)
    new_job(job, principal, intake.settings, None, None)  # raises what a submit would
    template = msgspec.to_builtins(job)
    for name in ("run_at", "delay_seconds", "depends_on", "on_dependency_failure", "callback_url"):
        template.pop(name, None)
    template["queue"] = job.queue or DEFAULT_QUEUE
    if await queues.missing([template["queue"]]):
        raise ValidationException(detail=f"queue {template['queue']!r} is not declared")
    return {k: v for k, v in template.items() if v is not None or k == "payload"}


def _first_tick(expr: str, tz: str) -> datetime:
    try:
        return cron.next_after(expr, tz, datetime.now(UTC))
    except cron.BadSchedule as exc:
        raise ValidationException(detail=str(exc)) from None


async def _own(store: ScheduleStore, tenant: str, schedule_id: uuid.UUID) -> Schedule:
    schedule = await store.get(tenant, schedule_id)
    if schedule is None:
        raise NotFoundException(detail=f"no schedule {schedule_id}")
    return schedule


@post(
    "/v1/schedules",
    guards=[requires_scopes],
    opt=WRITE,
    status_code=201,
    responses=problems(401, 403, 409, 413, 415, 422, 503),
)
async def create_schedule(
    request: AuthRequest,
    data: JSONBody[ScheduleIn],
    schedules: NamedDependency[ScheduleStore],
    queue_store: NamedDependency[QueueStore],
    intake: NamedDependency[Intake],
    settings: NamedDependency[Settings],
) -> Response[ScheduleOut]:
    """Create a schedule; its tenant has one of that name, or ``JOBQ_MAX_SCHEDULES_PER_TENANT``
    schedules: ``409``."""
    if await schedules.count(request.user.tenant) >= settings.max_schedules_per_tenant:
        raise Conflict(
            detail=f"the tenant has {settings.max_schedules_per_tenant} schedules, the most"
            " JOBQ_MAX_SCHEDULES_PER_TENANT allows; delete one first"
        )
    created = await schedules.create(
        Schedule(
            id=uuid7(),
            tenant=request.user.tenant,
            name=data.name,
            cron=data.cron,
            timezone=data.timezone,
            job=await _template(data.job, request.user, intake, queue_store),
            overlap=data.overlap,
            catch_up=data.catch_up,
            paused=data.paused,
            next_fire_at=_first_tick(data.cron, data.timezone),
        )
    )
    if created is None:
        raise Conflict(detail=f"a schedule named {data.name!r} exists")
    return Response(
        ScheduleOut.of(created),
        status_code=201,
        headers={"Location": f"/v1/schedules/{created.id}"},
    )


@get("/v1/schedules", guards=[requires_scopes], opt=READ, responses=problems(401, 403, 422, 503))
async def list_schedules(
    request: AuthRequest,
    schedules: NamedDependency[ScheduleStore],
    limit: Annotated[int, QueryParameter(ge=1, le=MAX_LIST_LIMIT)] = 50,
    cursor: Annotated[str | None, QueryParameter(pattern=NAME_PATTERN)] = None,
) -> ScheduleList:
    """The caller's schedules by name; pass ``next_cursor`` back as ``cursor`` for more."""
    page = await schedules.list(request.user.tenant, limit + 1, cursor)
    more = len(page) > limit
    items = [ScheduleOut.of(s) for s in page[:limit]]
    return ScheduleList(items=items, next_cursor=items[-1].name if more else None)


@get(PATH, guards=[requires_scopes], opt=READ, responses=problems(401, 403, 404, 503))
async def get_schedule(
    request: AuthRequest,
    schedule_id: FromPath[uuid.UUID],
    schedules: NamedDependency[ScheduleStore],
) -> ScheduleOut:
    """One schedule with its latest fires (each tick's job, or why it made none)."""
    schedule = await _own(schedules, request.user.tenant, schedule_id)
    return ScheduleOut.of(schedule, await schedules.fires(schedule.id))


@patch(
    PATH,
    guards=[requires_scopes],
    opt=WRITE,
    responses=problems(401, 403, 404, 413, 415, 422, 503),
)
async def change_schedule(
    request: AuthRequest,
    schedule_id: FromPath[uuid.UUID],
    data: JSONBody[SchedulePatch],
    schedules: NamedDependency[ScheduleStore],
    queue_store: NamedDependency[QueueStore],
    intake: NamedDependency[Intake],
) -> ScheduleOut:
    """Change a schedule: its cron, zone, job, overlap, catch-up, or pause it; a new cron or
    zone, or a resume, fires next at the first tick after now."""
    tenant = request.user.tenant
    current = await _own(schedules, tenant, schedule_id)
    changes: dict[str, Any] = {
        k: v for k, v in msgspec.structs.asdict(data).items() if v is not None and k != "job"
    }
    if data.job is not None:
        changes["job"] = await _template(data.job, request.user, intake, queue_store)
    expr, tz = changes.get("cron", current.cron), changes.get("timezone", current.timezone)
    if "cron" in changes or "timezone" in changes or (current.paused and data.paused is False):
        changes["next_fire_at"] = _first_tick(expr, tz)
    changed = await schedules.update(tenant, schedule_id, changes) if changes else current
    if changed is None:
        raise NotFoundException(detail=f"no schedule {schedule_id}")
    return ScheduleOut.of(changed, await schedules.fires(schedule_id))


@delete(PATH, guards=[requires_scopes], opt=WRITE, responses=problems(401, 403, 404, 503))
async def delete_schedule(
    request: AuthRequest,
    schedule_id: FromPath[uuid.UUID],
    schedules: NamedDependency[ScheduleStore],
) -> None:
    """Delete a schedule and its record of fires; the jobs it made stay."""
    if not await schedules.delete(request.user.tenant, schedule_id):
        raise NotFoundException(detail=f"no schedule {schedule_id}")


ROUTES = [create_schedule, list_schedules, get_schedule, change_schedule, delete_schedule]
