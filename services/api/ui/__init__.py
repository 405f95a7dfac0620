"""The dashboard, served by the API under ``/ui`` (docs/design.md §5.9): server-rendered
pages (Jinja2, autoescaped), one module per page, a stylesheet and no JavaScript."""

from __future__ import annotations

from litestar import Router
from litestar.static_files import create_static_files_router

from services.api.ui import dead, job, login, overview, schedules
from services.api.ui.render import HERE, template_config
from services.api.ui.session import (
    EXCEPTION_HANDLERS,
    PREFIX,
    PUBLIC_PATHS,
    SESSION,
    security_headers,
)

__all__ = ["PREFIX", "PUBLIC_PATHS", "SESSION", "routers", "security_headers", "template_config"]

#: Every page module's routes; a page's entry in the navigation is ``render.NAV``.
PAGES = (login, overview, dead, job, schedules)


def routers() -> list[Router]:
    """The pages, with errors as pages, and the stylesheet."""
    return [
        Router(
            "/",
            route_handlers=[route for p in PAGES for route in p.ROUTES],
            exception_handlers=EXCEPTION_HANDLERS,
            include_in_schema=False,
        ),
        create_static_files_router(f"{PREFIX}/static", directories=[HERE / "static"]),
    ]
