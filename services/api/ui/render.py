"""How a dashboard page is rendered: the navigation, the caller, its CSRF token, and the
templates' filters."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from litestar import Request, get
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Template
from litestar.template import TemplateConfig

from services.api.auth import requires_scopes
from services.api.tokens import Principal
from services.api.ui.session import csrf_token

HERE = Path(__file__).parent
#: (title, path) of each page in the navigation bar; a new page is a module of its own
#: (``ROUTES``, listed in ``services.api.ui.PAGES``) and a line here.
NAV = (
    ("Overview", "/ui"),
    ("Dead letters", "/ui/dead"),
    ("Schedules", "/ui/schedules"),
)

UiRequest = Request[Principal, str, Any]


def view(path: str) -> get:
    """A page's route: ``GET``, scope ``jobs:read``, outside the OpenAPI document."""
    return get(
        path, guards=[requires_scopes], opt={"scopes": ["jobs:read"]}, include_in_schema=False
    )


def page(request: UiRequest, template: str, **context: Any) -> Template:
    return Template(
        template_name=template,
        context={
            "nav": NAV,
            "path": request.url.path,
            "user": request.user,
            "csrf": csrf_token(request.auth),
            **context,
        },
    )


def age(seconds: float | None) -> str:
    """``1h 02m``, ``3m 05s``, ``4.2s``: a duration for a person."""
    if seconds is None:
        return "—"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours < 48 else f"{hours // 24}d {hours % 24}h"


def instant(at: datetime | None) -> str:
    """UTC to the second, as the API's timestamps are."""
    return "—" if at is None else at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def since(at: datetime | None) -> str:
    return "—" if at is None else f"{age((datetime.now(UTC) - at).total_seconds())} ago"


def _filters(engine: JinjaTemplateEngine) -> None:
    engine.engine.filters.update(age=age, instant=instant, since=since)


def template_config() -> TemplateConfig[JinjaTemplateEngine]:
    """Jinja2 over ``templates/``, autoescaping every value (Litestar's default)."""
    return TemplateConfig(
        directory=HERE / "templates", engine=JinjaTemplateEngine, engine_callback=_filters
    )
