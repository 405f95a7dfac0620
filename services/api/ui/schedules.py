"""``/ui/schedules``: the tenant's cron schedules by name, as ``GET /v1/schedules`` lists them,
with when each fires next, what it fired last (a link to that job) and the ticks it skipped.
Read-only: schedules are changed through ``/v1/schedules`` or ``jobq schedules``."""

from __future__ import annotations

from typing import Annotated

from litestar.di import NamedDependency
from litestar.params import QueryParameter
from litestar.response import Template

from services.api.ui.render import UiRequest, page, view
from shared.config import NAME_PATTERN
from shared.db.schedules import ScheduleStore

#: Schedules on a page; ``after`` (the last one's name) pages on.
PAGE_SIZE = 100


@view("/ui/schedules")
async def schedules_page(
    request: UiRequest,
    schedules: NamedDependency[ScheduleStore],
    after: Annotated[str | None, QueryParameter(pattern=NAME_PATTERN)] = None,
) -> Template:
    found = await schedules.list(request.user.tenant, PAGE_SIZE + 1, after)
    shown = found[:PAGE_SIZE]
    return page(
        request,
        "schedules.html",
        schedules=shown,
        more=shown[-1].name if len(found) > PAGE_SIZE else None,
    )


ROUTES = [schedules_page]
