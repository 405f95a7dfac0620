"""The dashboard's pages through Litestar's test client, on real PostgreSQL and RabbitMQ:
login and logout, each page rendered from real rows, errors as pages."""

from __future__ import annotations

import re
import time

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from services.api.app import token_config
from services.api.tokens import Principal, issue
from shared.config import Settings
from shared.credentials import credential_digest
from shared.db.clients import ClientStore
from tests.conftest import Bearer
from tests.integration.dashboard import Client, csrf_of, dead_job, log_in, ui

pytestmark = pytest.mark.integration
__all__ = ["ui"]  # the fixture


async def test_logging_in_sets_a_strict_http_only_cookie_scoped_to_ui(
    ui: Client, engine: AsyncEngine
) -> None:
    r = await log_in(ui, engine)
    cookie = next(v for k, v in r.headers.multi_items() if k == "set-cookie" and "jobq_ui=" in v)
    assert "httponly" in cookie.lower()
    assert "samesite=strict" in cookie.lower()
    assert "Path=/ui" in cookie
    assert "Secure" not in cookie  # served over http here
    overview = await ui.get("/ui")
    assert overview.status_code == 200
    assert '<th title="">default</th>' in overview.text
    assert "acme" in overview.text


async def test_wrong_credentials_show_the_form_again_and_set_no_session(
    ui: Client, engine: AsyncEngine
) -> None:
    client, _ = await ClientStore(engine).register("ui", "acme", ["jobs:read"])
    form = await ui.get("/ui/login")
    r = await ui.post(
        "/ui/login",
        data={
            "client_id": str(client.id),
            "client_secret": "jqs_wrong",
            "csrf": csrf_of(form.text),
        },
    )
    assert r.status_code == 401
    assert "Unknown client id or wrong secret" in r.text
    assert "jobq_ui=" not in r.headers.get("set-cookie", "").replace("jobq_ui_login=", "")
    assert (await ui.get("/ui", follow_redirects=False)).status_code == 303


async def test_a_page_without_a_session_sends_to_the_login_form(ui: Client) -> None:
    r = await ui.get("/ui/dead", follow_redirects=False)
    assert r.status_code == 303
    assert r.headers["location"] == "/ui/login"
    ui.cookies.set("jobq_ui", "not-a-token", path="/ui")
    ended = await ui.get("/ui", follow_redirects=False)
    assert ended.status_code == 303
    assert ended.headers["location"] == "/ui/login?expired=1"
    assert 'jobq_ui=""' in ended.headers["set-cookie"]  # forgotten
    form = await ui.get(ended.headers["location"])
    assert "Your session ended" in form.text


async def test_logging_out_forgets_the_session(ui: Client, engine: AsyncEngine) -> None:
    await log_in(ui, engine)
    page = await ui.get("/ui")
    r = await ui.post("/ui/logout", data={"csrf": csrf_of(page.text)}, follow_redirects=False)
    assert r.status_code == 303
    assert r.headers["location"] == "/ui/login"
    assert (await ui.get("/ui", follow_redirects=False)).headers["location"] == "/ui/login"


async def test_the_overview_shows_depth_rates_and_recent_failures(
    ui: Client, engine: AsyncEngine, bearer: Bearer
) -> None:
    h = await bearer()
    for _ in range(2):
        assert (await ui.post("/v1/jobs", json={"type": "noop"}, headers=h)).status_code == 202
    dead = await dead_job(ui, engine, h)
    globex = await bearer(tenant="globex")  # none of these is acme's
    await dead_job(ui, engine, globex)
    assert (await ui.post("/v1/jobs", json={"type": "noop"}, headers=globex)).status_code == 202
    await log_in(ui, engine)
    html = (await ui.get("/ui")).text
    row = re.search(r"<th title=\"\">default</th>(.*?)</tr>", html, re.S)
    assert row
    cells = re.findall(r'<td class="n[^"]*">([^<]*)</td>', row.group(1))
    # waiting scheduled queued running retrying succeeded dead canceled | ready oldest | rates
    assert cells[:8] == ["0", "0", "2", "0", "0", "0", "1", "0"]
    assert cells[8] == "2"  # ready
    assert cells[11] == "0.2"  # dead per minute: one in five minutes
    assert f"/ui/jobs/{dead}" in html
    assert "RuntimeError: boom 3" in html
    assert "broker: ready" not in html  # admin only
    ui.cookies.clear()
    await log_in(ui, engine, scopes=("admin", "jobs:read"))
    assert "broker: ready" in (await ui.get("/ui")).text


async def test_the_dead_letter_page_lists_dead_jobs_with_a_replay_button(
    ui: Client, engine: AsyncEngine, bearer: Bearer
) -> None:
    h = await bearer()
    dead = await dead_job(ui, engine, h)
    await ui.post("/v1/jobs", json={"type": "noop"}, headers=h)  # queued: not listed
    await log_in(ui, engine)
    html = (await ui.get("/ui/dead")).text
    assert html.count("<tr data-job=") == 1
    assert f'action="/ui/jobs/{dead}/replay"' in html


async def test_a_replay_requeues_the_dead_job_and_shows_it(
    ui: Client, engine: AsyncEngine, bearer: Bearer
) -> None:
    dead = await dead_job(ui, engine, await bearer())
    await log_in(ui, engine)
    csrf = csrf_of((await ui.get("/ui/dead")).text)
    r = await ui.post(f"/ui/jobs/{dead}/replay", data={"csrf": csrf}, follow_redirects=False)
    assert r.status_code == 303
    assert r.headers["location"] == f"/ui/jobs/{dead}"
    job = (await ui.get(r.headers["location"])).text
    assert 'id="status">queued<' in job
    # recorded, as every replay is (docs/design.md §8): by whom, when
    assert job.index("attempt 3 failed") < job.index("replayed") < job.index("by client")
    again = await ui.post(f"/ui/jobs/{dead}/replay", data={"csrf": csrf})
    assert again.status_code == 409  # never replayed twice; the refusal as a page
    assert "only a dead job can be replayed; this one is queued" in again.text
    async with engine.connect() as conn:
        actors = (await conn.execute(sa.text("SELECT actor FROM dead_letter_replays"))).all()
    assert len(actors) == 1


async def test_the_job_page_shows_its_timeline_payload_and_trace_link(
    ui: Client, engine: AsyncEngine, bearer: Bearer
) -> None:
    payload = {"note": "<script>alert(1)</script>"}
    dead = await dead_job(ui, engine, await bearer(), payload=payload)
    await log_in(ui, engine)
    r = await ui.get(f"/ui/jobs/{dead}")
    assert r.status_code == 200
    html = r.text
    for n in (1, 2, 3):
        assert f"attempt {n} failed" in html
        assert f"RuntimeError: boom {n}" in html
    assert html.index("attempt 3 started") < html.index("attempt 3 failed")
    assert re.search(r'href="http://jaeger\.example:16686/trace/[0-9a-f]{32}"', html)
    assert "<script>alert(1)</script>" not in html  # autoescaped
    assert "&lt;script&gt;" in html or "\\u003cscript\\u003e" in html


async def test_an_expired_or_revoked_session_ends_at_the_login_form_with_a_message(
    ui: Client, engine: AsyncEngine, settings: Settings
) -> None:
    await log_in(ui, engine)
    (client,) = [c for c in await ClientStore(engine).list() if c.name == "ui"]
    principal = Principal(
        str(client.id), "acme", frozenset({"jobs:read"}),
        credential=credential_digest(client.secret_hash),
    )  # fmt: skip
    expired = issue(token_config(settings), principal, time.time() - 3600, 60)
    session = ui.cookies["jobq_ui"]
    for token, then in ((expired, None), (session, client.id)):
        ui.cookies.set("jobq_ui", token, path="/ui")
        if then is not None:
            assert (await ui.get("/ui", follow_redirects=False)).status_code == 200
            assert await ClientStore(engine).revoke(then)
        r = await ui.get("/ui/dead", follow_redirects=False)
        assert r.status_code == 303
        assert r.headers["location"] == "/ui/login?expired=1"
        assert "Your session ended" in (await ui.get(r.headers["location"])).text


async def test_the_schedules_page_lists_the_tenants_schedules(
    ui: Client, engine: AsyncEngine, bearer: Bearer
) -> None:
    every = {"cron": "*/5 * * * *", "timezone": "Europe/Paris", "job": {"type": "report.daily"}}
    for tenant, name in (("acme", "nightly-report"), ("globex", "their-schedule")):
        r = await ui.post(
            "/v1/schedules", json={"name": name, **every}, headers=await bearer(tenant)
        )
        assert r.status_code == 201, r.text
    await log_in(ui, engine)
    html = (await ui.get("/ui/schedules")).text
    assert html.count("<tr data-schedule=") == 1
    assert "nightly-report" in html
    assert "<code>*/5 * * * *</code>" in html
    assert "Europe/Paris" in html
    assert "report.daily" in html
    assert "their-schedule" not in html
    assert 'href="/ui/schedules" aria-current="page"' in html
