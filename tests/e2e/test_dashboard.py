"""The dashboard in a real browser against the real system (api, worker and scheduler
processes): an operator logs in with the credentials ``jobq init`` wrote, finds a dead job,
fixes what killed it, replays it and watches it succeed.

Needs Chromium (``apt install chromium``; ``.ci/run`` installs it): skipped without it on a
developer's machine, failed on CI (``CI`` set). ``JOBQ_UPDATE_SCREENSHOTS=1`` writes the
pages it passes through to ``docs/screenshots/`` (the README's).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import jobq
import pytest

from shared.config import Settings
from tests.chaos.cluster import own_cluster
from tests.conftest import TEST_SECRET
from tests.e2e.browser import CHROMIUM, chromium
from tests.procs import REPO_ROOT, clean_env

pytestmark = pytest.mark.e2e
SCREENSHOTS = REPO_ROOT / "docs" / "screenshots"


@pytest.fixture
def browser_installed() -> None:
    if CHROMIUM is None:
        message = "chromium is not installed (apt install chromium)"
        (pytest.fail if os.environ.get("CI") else pytest.skip)(message)


@pytest.mark.usefixtures("browser_installed")
async def test_an_operator_replays_a_dead_job_from_the_dashboard_and_sees_it_succeed(
    database_url: str, amqp_url: str, tmp_path: Path
) -> None:
    overrides = {
        "JOBQ_HANDLERS": "tests.e2e.dashboard_handlers",
        "JOBQ_UI_TRACE_URL": "http://127.0.0.1:16686/trace/{trace_id}",
    }
    shots = tmp_path
    if os.environ.get("JOBQ_UPDATE_SCREENSHOTS"):  # with RabbitMQ's figures, as an admin sees
        shots, overrides["JOBQ_MANAGEMENT_URL"] = SCREENSHOTS, Settings().management_url
    fixed = tmp_path / "upstream-fixed"
    async with own_cluster(
        database_url, amqp_url, "dashboard", tmp_path, TEST_SECRET, overrides
    ) as c:
        init = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "services", "init", "--admin-file", str(tmp_path / "admin.json")],
            env=clean_env(c.env), capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert init.returncode == 0, init.stderr
        admin = json.loads((tmp_path / "admin.json").read_text())
        await c.up(workers=1, schedulers=1)
        async with jobq.AsyncClient(
            url=c.url, client_id=admin["client_id"], client_secret=admin["client_secret"]
        ) as api:
            done = [await api.submit("echo", {"n": n}) for n in range(5)]
            await api.submit("fail", {"message": "card declined"}, max_attempts=1)
            dead = await api.submit("ui.flaky", {"fixed": str(fixed)}, max_attempts=2)
            for j in done:
                assert (await api.wait(j.id, timeout=30)).status == "succeeded"
            assert (await api.wait(dead.id, timeout=30)).status == "dead"
            schedule = {"name": "nightly-report", "cron": "30 2 * * *", "timezone": "Europe/Paris",
                        "job": {"type": "echo", "payload": {"report": "daily"}}}  # fmt: skip
            async with httpx.AsyncClient(base_url=c.url, timeout=10) as http:
                r = await http.post(
                    "/v1/schedules", json=schedule,
                    headers={"Authorization": f"Bearer {await api.token()}"},
                )  # fmt: skip
                assert r.status_code == 201, r.text

        async with chromium(tmp_path) as page:
            await page.goto(f"{c.url}/ui")
            await page.wait_for("location.pathname === '/ui/login'")
            await page.type_into("input[name=client_id]", admin["client_id"])
            await page.type_into("input[name=client_secret]", admin["client_secret"])
            await page.click("form.login button")
            await page.wait_for("location.pathname === '/ui'")
            queues = await page.evaluate("document.querySelector('table.queues').innerText")
            assert "default" in queues
            assert "card declined" in await page.evaluate("document.body.innerText")
            await page.screenshot(shots / "overview.png")

            await page.click('a[href="/ui/dead"]')
            row = f'tr[data-job="{dead.id}"]'
            await page.wait_for(f"!!document.querySelector('{row}')")
            await page.screenshot(shots / "dead-letters.png")

            fixed.touch()  # the upstream is back
            await page.click(f"{row} button")
            await page.wait_for(f"location.pathname === '/ui/jobs/{dead.id}'")
            # The page reloads itself until the job is finished.
            await page.wait_for(
                "document.getElementById('status').innerText === 'succeeded'", within=30
            )
            timeline = await page.evaluate("document.querySelector('ol.timeline').innerText")
            assert "attempt 2 failed" in timeline
            assert "replayed" in timeline  # and by whom: the admin client
            assert admin["client_id"] in timeline
            assert timeline.rstrip().endswith("succeeded")
            trace = await page.evaluate("document.querySelector('dl.facts a[target]').href")
            assert trace.startswith("http://127.0.0.1:16686/trace/")
            await page.screenshot(shots / "job.png")

            await page.click('a[href="/ui/schedules"]')
            await page.wait_for("!!document.querySelector('tr[data-schedule]')")
            assert "nightly-report" in await page.evaluate("document.body.innerText")
            await page.screenshot(shots / "schedules.png")
