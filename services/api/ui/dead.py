"""``/ui/dead``: the tenant's dead jobs, newest first, each with a replay button.

A replay is the API's retry (``services.api.routes.jobs.requeue``: the same move, the same
ticket through the outbox), behind scope ``jobs:write`` and the session's CSRF token.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from litestar import get, post
from litestar.di import NamedDependency
from litestar.enums import RequestEncodingType
from litestar.params import Body, FromPath, FromQuery
from litestar.response import Redirect, Template

from services.api.auth import requires_scopes
from services.api.routes.jobs import requeue
from services.api.ui.login import CsrfForm
from services.api.ui.render import UiRequest, page
from services.api.ui.session import check_csrf
from shared.config import Settings
from shared.db.jobs import JobStore
from shared.domain import JobStatus
from shared.outbox import Outbox

#: Dead jobs on a page; ``before`` (the last one's id) pages on.
PAGE_SIZE = 50


@get("/ui/dead", guards=[requires_scopes], opt={"scopes": ["jobs:read"]}, include_in_schema=False)
async def dead_letters(
    request: UiRequest,
    store: NamedDependency[JobStore],
    settings: NamedDependency[Settings],
    before: FromQuery[uuid.UUID | None] = None,
) -> Template:
    jobs, more = await store.list(
        request.user.tenant,
        limit=PAGE_SIZE,
        max_bytes=settings.max_page_bytes,
        before=before,
        status=JobStatus.DEAD,
    )
    return page(
        request,
        "dead.html",
        jobs=jobs,
        older=jobs[-1].id if more else None,
        can_replay="jobs:write" in request.user.scopes,
    )


@post(
    "/ui/jobs/{job_id:uuid}/replay",
    guards=[requires_scopes],
    opt={"scopes": ["jobs:write"]},
    include_in_schema=False,
    status_code=303,
)
async def replay(
    request: UiRequest,
    job_id: FromPath[uuid.UUID],
    data: Annotated[CsrfForm, Body(media_type=RequestEncodingType.URL_ENCODED)],
    store: NamedDependency[JobStore],
    outbox: NamedDependency[Outbox],
) -> Redirect:
    """Re-queue the job and show it."""
    check_csrf(request, data.csrf)
    await requeue(store, outbox, request.user.tenant, job_id)
    return Redirect(f"/ui/jobs/{job_id}", status_code=303)


ROUTES = [dead_letters, replay]
