"""Attacks on the dashboard, on real PostgreSQL and RabbitMQ: forged and missing CSRF tokens,
missing scopes, other tenants' jobs, the session cookie used against the API, framing and
injected markup."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
import sqlalchemy as sa
from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import AsyncEngine

from services.api.app import create_app
from services.api.ui.session import HEADERS
from shared.config import Settings
from shared.db.clients import ClientStore
from tests.conftest import Bearer
from tests.integration.dashboard import Client, csrf_of, dead_job, log_in, ui

pytestmark = pytest.mark.integration
__all__ = ["ui"]  # the fixture


async def status_of(engine: AsyncEngine, job_id: str) -> str:
    async with engine.connect() as conn:
        return str(
            (
                await conn.execute(
                    sa.text("SELECT status FROM jobs WHERE id = :id"), {"id": job_id}
                )
            ).scalar_one()
        )


async def test_a_replay_without_or_with_a_wrong_csrf_token_is_refused(
    ui: Client, engine: AsyncEngine, bearer: Bearer
) -> None:
    dead = await dead_job(ui, engine, await bearer())
    await log_in(ui, engine)
    right = csrf_of((await ui.get("/ui/dead")).text)
    for data in ({}, {"csrf": ""}, {"csrf": "0" * 64}, {"csrf": right[:-1]}):
        r = await ui.post(f"/ui/jobs/{dead}/replay", data=data, follow_redirects=False)
        assert r.status_code == 403, data
        assert "CSRF" in r.text
    assert await status_of(engine, dead) == "dead"


async def test_another_sessions_csrf_token_does_not_replay(
    ui: Client, engine: AsyncEngine, bearer: Bearer
) -> None:
    dead = await dead_job(ui, engine, await bearer())
    await log_in(ui, engine)
    theirs = csrf_of((await ui.get("/ui/dead")).text)
    ui.cookies.clear()
    await log_in(ui, engine)  # another client of the same tenant: another token
    r = await ui.post(f"/ui/jobs/{dead}/replay", data={"csrf": theirs})
    assert r.status_code == 403
    assert await status_of(engine, dead) == "dead"


async def test_a_replay_by_a_read_only_session_is_403(
    ui: Client, engine: AsyncEngine, bearer: Bearer
) -> None:
    dead = await dead_job(ui, engine, await bearer())
    await log_in(ui, engine, scopes=("jobs:read",))
    page = await ui.get("/ui/dead")
    assert page.status_code == 200
    assert "/replay" not in page.text  # no button either
    csrf = csrf_of(page.text)  # the logout form's: a valid token of this session
    r = await ui.post(f"/ui/jobs/{dead}/replay", data={"csrf": csrf})
    assert r.status_code == 403
    assert "missing scope: jobs:write" in r.text
    assert await status_of(engine, dead) == "dead"


async def test_a_session_without_jobs_read_sees_no_page(ui: Client, engine: AsyncEngine) -> None:
    await log_in(ui, engine, scopes=("jobs:work",))
    for path in ("/ui", "/ui/dead", "/ui/schedules"):
        r = await ui.get(path)
        assert r.status_code == 403
        assert "missing scope: jobs:read" in r.text


async def test_another_tenants_job_is_404_to_read_and_to_replay(
    ui: Client, engine: AsyncEngine, bearer: Bearer
) -> None:
    theirs = await dead_job(ui, engine, await bearer(tenant="globex"))
    await log_in(ui, engine, tenant="acme")
    assert theirs not in (await ui.get("/ui/dead")).text
    assert (await ui.get(f"/ui/jobs/{theirs}")).status_code == 404
    csrf = csrf_of((await ui.get("/ui")).text)
    r = await ui.post(f"/ui/jobs/{theirs}/replay", data={"csrf": csrf})
    assert r.status_code == 404
    assert await status_of(engine, theirs) == "dead"


async def test_the_session_cookie_is_no_credential_for_the_api(
    ui: Client, engine: AsyncEngine
) -> None:
    await log_in(ui, engine)
    token = ui.cookies["jobq_ui"]
    ui.cookies.set("jobq_ui", token, path="/")  # even if a browser sent it there
    assert (await ui.get("/v1/jobs")).status_code == 401
    # ... while the header is one for the dashboard (scripts, curl)
    ui.cookies.clear()
    r = await ui.get("/ui", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200


async def test_a_login_post_without_its_forms_csrf_cookie_is_refused(
    ui: Client, engine: AsyncEngine
) -> None:
    form = await ui.get("/ui/login")
    csrf = csrf_of(form.text)
    ui.cookies.clear()  # another site's form: no cookie of ours came with it
    r = await ui.post(
        "/ui/login", data={"client_id": "x", "client_secret": "y", "csrf": csrf},
        follow_redirects=False,
    )  # fmt: skip
    assert r.status_code == 403
    assert "jobq_ui=" not in r.headers.get("set-cookie", "").replace("jobq_ui_login=", "")


async def test_a_logout_without_the_csrf_token_is_refused(ui: Client, engine: AsyncEngine) -> None:
    await log_in(ui, engine)
    assert (await ui.post("/ui/logout", data={})).status_code == 403
    assert (await ui.get("/ui", follow_redirects=False)).status_code == 200


async def test_every_dashboard_answer_carries_the_security_headers(
    ui: Client, engine: AsyncEngine
) -> None:
    answers = [
        await ui.get("/ui/login"),
        await ui.get("/ui", follow_redirects=False),  # a redirect
    ]
    await log_in(ui, engine)
    answers += [await ui.get("/ui"), await ui.get("/ui/jobs/00000000-0000-0000-0000-000000000000")]
    assert answers[-1].status_code == 404  # an error page
    for r in answers:
        for name, value in HEADERS.items():
            assert r.headers[name] == value, (r.url, name)
    assert "default-src 'self'" in HEADERS["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in HEADERS["Content-Security-Policy"]
    css = await ui.get("/ui/static/ui.css")
    assert css.status_code == 200
    assert css.headers["X-Content-Type-Options"] == "nosniff"
    api = await ui.get("/health")
    assert "Content-Security-Policy" not in api.headers  # the API's answers are left alone


async def test_markup_in_errors_is_escaped_on_every_page(
    ui: Client, engine: AsyncEngine, bearer: Bearer
) -> None:
    dead = await dead_job(ui, engine, await bearer())
    evil = '<img src=x onerror="alert(1)">'
    async with engine.begin() as conn:
        await conn.execute(
            sa.text(
                "UPDATE jobs SET last_error = jsonb_build_object('type', CAST(:e AS text), 'message', CAST(:e AS text)),"
                " errors = jsonb_build_array(jsonb_build_object('type', CAST(:e AS text), 'attempt', 1))"
                " WHERE id = :id"
            ),
            {"e": evil, "id": dead},
        )
    await log_in(ui, engine)
    for path in ("/ui", "/ui/dead", f"/ui/jobs/{dead}"):
        html = (await ui.get(path)).text
        assert evil not in html, path
        assert "&lt;img src=x" in html, path


async def test_the_dashboard_is_not_in_the_openapi_document(ui: Client) -> None:
    paths = (await ui.get("/schema/openapi.json")).json()["paths"]
    assert paths
    assert not [p for p in paths if p.startswith("/ui")]


async def test_guessing_secrets_through_the_login_form_is_throttled_like_the_token_endpoint(
    settings: Settings, clean: None, engine: AsyncEngine
) -> None:
    client, secret = await ClientStore(engine).register("ui", "acme", ["jobs:read"])
    limited = replace(settings, token_client_failures_per_minute=2)
    async with AsyncTestClient(app=create_app(limited)) as ui:

        async def attempt(password: str) -> Any:
            form = await ui.get("/ui/login")
            return await ui.post(
                "/ui/login",
                data={"client_id": str(client.id), "client_secret": password,
                      "csrf": csrf_of(form.text)},
                follow_redirects=False,
            )  # fmt: skip

        assert [(await attempt("jqs_guess")).status_code for _ in range(2)] == [401, 401]
        refused = await attempt(secret)  # even the right secret, once the budget is spent
        assert refused.status_code == 429
        assert "Too many failed attempts" in refused.text
        assert int(refused.headers["retry-after"]) > 0
        assert "jobq_ui=" not in refused.headers.get("set-cookie", "").replace("jobq_ui_", "")
        # the API's endpoint shares the budget: one check for both
        token = await ui.post(
            "/v1/auth/token",
            data={"grant_type": "client_credentials", "client_id": str(client.id),
                  "client_secret": secret},
        )  # fmt: skip
        assert token.status_code == 429
