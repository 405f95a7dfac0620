"""``/ui/jobs/{id}``: one job of the caller's tenant, its timeline (with its replays from the
dead-letter record) and a link to its trace; another tenant's job is 404, as in the API."""

from __future__ import annotations

import uuid

from litestar.di import NamedDependency
from litestar.exceptions import NotFoundException
from litestar.params import FromPath
from litestar.response import Template

from services.api.schemas import JobOut
from services.api.ui.render import UiRequest, page, view
from services.api.ui.timeline import timeline
from shared.config import Settings
from shared.db.dead_letters import DeadLetterStore
from shared.db.jobs import JobStore
from shared.domain import TERMINAL


def trace_link(template: str, trace_id: str | None) -> str | None:
    """``JOBQ_UI_TRACE_URL`` with the job's trace id in it; ``None`` without either."""
    return template.replace("{trace_id}", trace_id) if template and trace_id else None


@view("/ui/jobs/{job_id:uuid}")
async def job_page(
    request: UiRequest,
    job_id: FromPath[uuid.UUID],
    store: NamedDependency[JobStore],
    dead_store: NamedDependency[DeadLetterStore],
    settings: NamedDependency[Settings],
) -> Template:
    # A dead job, or one replayed from dead, comes with its replays (who, when).
    row, replays = await dead_store.get(request.user.tenant, job_id)
    if row is None:
        row = await store.get(request.user.tenant, job_id)
    if row is None:
        raise NotFoundException(detail=f"no job {job_id}")
    job = JobOut.of(row)
    return page(
        request,
        "job.html",
        job=job,
        events=timeline(job, replays),
        trace_url=trace_link(settings.ui_trace_url, job.trace_id),
        finished=job.status in TERMINAL,
        can_replay="jobs:write" in request.user.scopes and job.status == "dead",
    )


ROUTES = [job_page]
