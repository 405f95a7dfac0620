"""The ``jobq`` commands for people, run as processes against the real API."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from jobq import Client

from tests.sdk.conftest import Live

pytestmark = pytest.mark.e2e


def jobq(
    config: Path, url: str, *args: str, stdin: str = "", check: bool = True
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "JOBQ_CONFIG_DIR": str(config), "JOBQ_API_URL": url, "COLUMNS": "200"}
    for name in ("JOBQ_CLIENT_ID", "JOBQ_CLIENT_SECRET", "JOBQ_TOKEN"):
        env.pop(name, None)
    done = subprocess.run(
        [sys.executable, "-m", "services", *args], input=stdin, env=env, capture_output=True,
        text=True, timeout=60, check=False,
    )  # fmt: skip
    if check:
        assert done.returncode == 0, done.stderr
    return done


Run = Callable[..., Awaitable[subprocess.CompletedProcess[str]]]


def runner(config: Path, url: str) -> Run:
    async def run(
        *args: str, stdin: str = "", check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(jobq, config, url, *args, stdin=stdin, check=check)

    return run


async def test_login_then_ls_get_submit_cancel_retry_and_watch(live: Live, tmp_path: Path) -> None:
    creds = await live.credentials()
    run = runner(tmp_path, live.url)
    # The secret comes from stdin (a prompt at a terminal), never from the command line.
    done = await run("login", "--client-id", creds.client_id, stdin=creds.client_secret + "\n")
    assert "profile 'default'" in done.stdout
    profile = tmp_path / "profiles.json"
    assert stat.S_IMODE(profile.stat().st_mode) == 0o600
    assert json.loads(profile.read_text())["default"]["client_id"] == creds.client_id

    done = await run("submit", "echo", "--payload", '{"a": 1}', "--wait", "30", "--json")
    echoed = json.loads(done.stdout)
    assert (echoed["status"], echoed["result"]) == ("succeeded", {"a": 1})
    later = [json.loads((await run("submit", "noop", "--delay", "3600", "--json")).stdout)
             for _ in range(3)]  # fmt: skip

    listed = [json.loads(line) for line in (await run("ls", "--json")).stdout.splitlines()]
    assert [j["id"] for j in listed] == [j["id"] for j in reversed([echoed, *later])]
    table = (await run("ls", "--status", "scheduled")).stdout
    assert all(j["id"] in table for j in later)
    assert echoed["id"] not in table
    assert json.loads((await run("get", echoed["id"], "--json")).stdout)["result"] == {"a": 1}
    assert "succeeded" in (await run("get", echoed["id"])).stdout

    for j in later[:2]:
        assert "canceled" in (await run("cancel", j["id"])).stdout
    refused = await run("retry", "--status", "canceled", check=False)  # not a terminal
    assert refused.returncode == 2
    assert "--yes" in refused.stderr
    done = await run("retry", "--status", "canceled", "--yes")
    assert "retried 2 of 2" in done.stdout
    with Client(creds) as client:
        assert {client.get(j["id"]).status.value for j in later[:2]} <= {
            "queued",
            "running",
            "succeeded",
        }

    # Text from jobs (types, errors) is shown as it is, never read as rich markup.
    payload = json.dumps({"message": "[/] [bold]boom", "permanent": True})
    dead = json.loads((await run("submit", "fail", "--payload", payload, "--wait", "30",
                                 "--json", check=False)).stdout)  # fmt: skip
    assert dead["status"] == "dead"
    assert "[/] [bold]boom" in (await run("ls", "--status", "dead")).stdout

    view = (await run("watch", "--count", "1", "--jobs", "3")).stdout
    assert "queues" in view
    assert "default" in view
    assert "latest 3 jobs" in view


async def test_refusals_are_one_line(live: Live, tmp_path: Path) -> None:
    creds = await live.credentials()
    run = runner(tmp_path, live.url)
    done = await run("ls", check=False)
    assert done.returncode == 2
    assert done.stderr.startswith("jobq: no profile 'default'")
    assert "jobq login" in done.stderr
    done = await run("login", "--client-id", creds.client_id, stdin="wrong\n", check=False)
    assert done.returncode == 1, done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert "invalid client credentials" in done.stderr
    assert not (tmp_path / "profiles.json").exists()
    await run("login", "--client-id", creds.client_id, stdin=creds.client_secret + "\n")
    done = await run("get", "0190f7c4-6b1e-7c3a-9d2e-6f1a2b3c4d5e", check=False)
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith("jobq: no job"), done.stderr
    done = await run("submit", "echo", "--payload", "{nope", check=False)
    assert done.returncode == 2
    assert "--payload is not JSON" in done.stderr


async def test_dead_ls_show_replay_and_purge(live: Live, tmp_path: Path) -> None:
    creds = await live.credentials()
    run = runner(tmp_path, live.url)
    await run("login", "--client-id", creds.client_id, stdin=creds.client_secret + "\n")
    with Client(creds) as client:
        jobs = [client.submit("fail", {"message": f"boom {i}"}, max_attempts=1) for i in (0, 1)]
        for j in jobs:
            assert client.wait(j.id, timeout=30).status.value == "dead"
    first = str(jobs[0].id)

    listed = [json.loads(line) for line in (await run("dead", "ls", "--json")).stdout.splitlines()]
    assert sorted(j["id"] for j in listed) == sorted(str(j.id) for j in jobs)
    table = (await run("dead", "ls", "--error", "HandlerError")).stdout
    assert first in table
    assert "boom 0" in table
    assert (await run("dead", "ls", "--error", "Other", "--json")).stdout == ""
    shown = (await run("dead", "show", first)).stdout
    assert "HandlerError" in shown
    assert "boom 0" in shown

    # One job with a new payload: it runs again (and fails again: it is ``fail``).
    done = await run("dead", "replay", first, "--payload", '{"message": "again"}')
    assert f"{first} queued with a new payload" in done.stdout
    with Client(creds) as client:
        again = client.wait(first, timeout=30)
        assert [e["message"] for e in again.errors] == ["boom 0", "again"]
        letter = client.dead_letter(first)
    assert [r.actor for r in letter.replays] == [creds.client_id]
    assert "replays" in (await run("dead", "show", first)).stdout

    # By filter: a count and a confirmation first (none at hand: refused).
    refused = await run("dead", "replay", "--error", "HandlerError", check=False)
    assert refused.returncode == 2
    assert "--yes" in refused.stderr
    done = await run("dead", "replay", "--error", "HandlerError", "--yes")
    assert "replayed 2, skipped 0" in done.stdout
    with Client(creds) as client:
        for j in jobs:
            assert client.wait(j.id, timeout=30).status.value == "dead"

    counted = await run("dead", "purge", "--type", "fail")
    assert "2 dead job(s) match; add --yes" in counted.stdout
    assert len((await run("dead", "ls", "--json")).stdout.splitlines()) == 2
    assert "deleted 2 dead job(s)" in (await run("dead", "purge", "--yes")).stdout
    assert (await run("dead", "ls", "--json")).stdout == ""
    missing = await run("dead", "show", first, check=False)
    assert missing.returncode == 1
    assert missing.stderr.startswith("jobq: no dead letter")
