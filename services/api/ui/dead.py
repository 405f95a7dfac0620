"""``/ui/dead``: the tenant's dead jobs, those that died last first, each with a replay button.

Both are the dead-letter resource's (docs/design.md §8): the list is ``GET /v1/dead``'s read,
a replay is ``POST /v1/dead/replay`` of one id (``DeadLetters.replay``: recorded with who made
it, never twice, its ticket through the outbox), behind scope ``jobs:write`` and the
session's CSRF token.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from litestar import post
from litestar.di import NamedDependency
from litestar.enums import RequestEncodingType
from litestar.exceptions import NotFoundException
from litestar.params import Body, FromPath, QueryParameter
from litestar.response import Redirect, Template

from services.api.auth import requires_scopes
from services.api.cursors import DEAD_CURSOR, dead_cursor, parse_dead_cursor
from services.api.dead_letters import DeadLetters, dead_filter
from services.api.errors import Conflict
from services.api.schemas import ReplayIn
from services.api.ui.login import CsrfForm
from services.api.ui.render import UiRequest, page, view
from services.api.ui.session import check_csrf
from shared.config import Settings
from shared.db.dead_letters import DeadLetterStore

#: Dead jobs on a page; ``cursor`` pages on.
PAGE_SIZE = 50


@view("/ui/dead")
async def dead_letters(
    request: UiRequest,
    dead_store: NamedDependency[DeadLetterStore],
    settings: NamedDependency[Settings],
    cursor: Annotated[str | None, QueryParameter(pattern=DEAD_CURSOR)] = None,
) -> Template:
    jobs, more = await dead_store.list(
        dead_filter(request.user.tenant, None),
        limit=PAGE_SIZE,
        max_bytes=settings.max_page_bytes,
        after=parse_dead_cursor(cursor) if cursor else None,
    )
    last = jobs[-1] if more else None
    return page(
        request,
        "dead.html",
        jobs=jobs,
        older=dead_cursor(last.finished_at, last.id) if last is not None else None,
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
    dead_letters: NamedDependency[DeadLetters],
) -> Redirect:
    """Replay the dead job and show it; one that is not (any more) dead is ``409``."""
    check_csrf(request, data.csrf)
    outcome = await dead_letters.replay(request.user, ReplayIn(ids=[job_id]), None)
    for skipped in outcome.skipped:
        if skipped.reason == "not_found":
            raise NotFoundException(detail=f"no job {job_id}")
        if skipped.reason == "not_dead":
            raise Conflict(detail=f"only a dead job can be replayed; this one is {skipped.status}")
        raise Conflict(detail=f"its queue is no longer declared ({skipped.reason})")
    return Redirect(f"/ui/jobs/{job_id}", status_code=303)


ROUTES = [dead_letters, replay]
