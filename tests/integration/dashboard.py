"""The dashboard's test helpers: an app with a trace link, logging in through the form, and
a job made dead the way a worker leaves it."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
import sqlalchemy as sa
from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import AsyncEngine

from services.api.app import create_app
from shared.config import Settings
from shared.db.clients import ClientStore

Client = AsyncTestClient[Litestar]
TRACE_URL = "http://jaeger.example:16686/trace/{trace_id}"


@pytest.fixture
async def ui(settings: Settings, clean: None) -> AsyncIterator[Client]:
    app = create_app(replace(settings, ui_trace_url=TRACE_URL))
    async with AsyncTestClient(app=app) as client:
        yield client


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, html
    return found.group(1)


async def log_in(
    ui: Client,
    engine: AsyncEngine,
    tenant: str = "acme",
    scopes: tuple[str, ...] = ("jobs:read", "jobs:write"),
) -> Any:
    """Log in through the form with a new client's credentials; the overview's answer."""
    client, secret = await ClientStore(engine).register("ui", tenant, list(scopes))
    form = await ui.get("/ui/login")
    r = await ui.post(
        "/ui/login",
        data={"client_id": str(client.id), "client_secret": secret, "csrf": csrf_of(form.text)},
        follow_redirects=False,
    )
    assert r.status_code == 303, r.text
    assert r.headers["location"] == "/ui"
    return r


async def dead_job(ui: Client, engine: AsyncEngine, headers: dict[str, str], **job: Any) -> str:
    """A job submitted through the API, then dead after three failed attempts."""
    r = await ui.post("/v1/jobs", json={"type": "noop", **job}, headers=headers)
    assert r.status_code == 202, r.text
    errors = [{"type": "RuntimeError", "message": f"boom {n}", "attempt": n} for n in (1, 2, 3)]
    async with engine.begin() as conn:
        await conn.execute(
            sa.text(
                "UPDATE jobs SET status = 'dead', attempts = 3, max_attempts = 3,"
                " errors = CAST(:errors AS jsonb), last_error = CAST(:last AS jsonb),"
                " started_at = now(), finished_at = now(), published_at = now(),"
                " updated_at = now() WHERE id = :id"
            ),
            {"errors": json.dumps(errors), "last": json.dumps(errors[-1]), "id": r.json()["id"]},
        )
    return str(r.json()["id"])
