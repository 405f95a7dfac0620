"""``jobq up`` as real processes: the CLI, the supervisor, api, scheduler and workers."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.config import Settings
from tests.conftest import TEST_SECRET

pytestmark = pytest.mark.e2e


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def children(pid: int) -> list[int]:
    """Direct child processes of ``pid`` (from /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def until(condition: Any, within: float = 30.0) -> Any:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.1)
    pytest.fail(f"condition not met within {within}s")


class System:
    def __init__(self, env: dict[str, str], url: str, proc: subprocess.Popen[bytes]):
        self.env, self.url, self.proc = env, url, proc

    def jobq(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "services", *args],
            env=self.env, capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        return done.stdout

    def workers(self) -> list[int]:
        return [p for p in children(self.proc.pid) if " worker" in cmdline(p)]

    def apis(self) -> list[int]:
        """The processes serving the API (under ``jobq api --processes N``, its children)."""
        [api] = [p for p in children(self.proc.pid) if " api" in cmdline(p)]
        return children(api) or [api]


@pytest.fixture
def system(base_settings: Settings, clean: None, tmp_path: Path) -> Iterator[System]:
    with running(base_settings, tmp_path) as system:
        yield system


@contextmanager
def running(base_settings: Settings, tmp_path: Path, **env_: str) -> Iterator[System]:
    port = free_port()
    env = {
        **os.environ,
        "JOBQ_DATABASE_URL": base_settings.database_url,
        "JOBQ_AMQP_URL": base_settings.amqp_url,
        "JOBQ_BROKER_PREFIX": base_settings.broker_prefix,
        "JOBQ_JWT_SECRET": TEST_SECRET,
        "JOBQ_API_PORT": str(port),
        "JOBQ_LEASE_SECONDS": "2",
        "JOBQ_SCHEDULER_INTERVAL_SECONDS": "0.2",
        "JOBQ_SHUTDOWN_GRACE_SECONDS": "2",
        "JOBQ_WORKER_CONCURRENCY": "4",
        "JOBQ_API_URL": f"http://127.0.0.1:{port}",
        **env_,
    }
    log = (tmp_path / "up.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "services", "up", "--workers", "2"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    system = System(env, url, proc)
    try:

        def ready() -> bool:
            try:
                return httpx.get(f"{url}/health/ready", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        until(ready, 60)
        until(lambda: len(system.workers()) == 2)
        yield system
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        assert proc.returncode == 0, (tmp_path / "up.log").read_text()[-3000:]


def token(system: System) -> dict[str, str]:
    created = json.loads(
        system.jobq("clients", "create", "--name", "e2e", "--tenant", "e2e",
                    "--scopes", "jobs:write,jobs:read", "--json")
    )  # fmt: skip
    tok = system.jobq(
        "token", "--client-id", created["client_id"], "--client-secret", created["client_secret"]
    ).strip()
    return {"Authorization": f"Bearer {tok}"}


def wait_job(system: System, headers: dict[str, str], job_id: str, status: str) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        job: dict[str, Any] = httpx.get(f"{system.url}/v1/jobs/{job_id}", headers=headers).json()
        return job if job["status"] == status else None

    result: dict[str, Any] = until(reached)
    return result


def test_a_job_submitted_over_http_succeeds(system: System) -> None:
    headers = token(system)
    r = httpx.post(
        f"{system.url}/v1/jobs", json={"type": "echo", "payload": [1, 2]}, headers=headers
    )
    assert r.status_code == 202, r.text
    assert wait_job(system, headers, r.json()["id"], "succeeded")["result"] == [1, 2]
    status = json.loads(
        system.jobq("get", r.json()["id"], "--json", "--token", headers["Authorization"][7:])
    )
    assert status["status"] == "succeeded"
    # the dashboard, as `jobq up` (`make run`) serves it, takes the same token
    page = httpx.get(f"{system.url}/ui/jobs/{r.json()['id']}", headers=headers)
    assert page.status_code == 200
    assert 'id="status">succeeded<' in page.text


def test_a_job_survives_its_worker_being_killed_mid_run(system: System) -> None:
    headers = token(system)
    r = httpx.post(
        f"{system.url}/v1/jobs", json={"type": "sleep", "payload": {"seconds": 2}}, headers=headers
    )
    job_id = r.json()["id"]
    wait_job(system, headers, job_id, "running")
    before = system.workers()
    for pid in before:  # whichever worker holds it
        os.kill(pid, signal.SIGKILL)
    job = wait_job(system, headers, job_id, "succeeded")
    assert job["attempts"] == 2
    assert job["errors"][0]["type"] == "LeaseExpired"
    until(lambda: len(system.workers()) == 2 and not set(system.workers()) & set(before))


def test_api_processes_share_the_port_and_one_killed_is_replaced_while_the_other_serves(
    base_settings: Settings, clean: None, tmp_path: Path
) -> None:
    with running(base_settings, tmp_path, JOBQ_API_PROCESSES="2") as system:
        headers = token(system)
        apis = until(lambda: len(system.apis()) == 2 and system.apis())
        os.kill(apis[0], signal.SIGKILL)
        ids = []
        for i in range(20):  # fresh connections: the kernel hands them to a live process
            r = httpx.post(f"{system.url}/v1/jobs", json={"type": "echo", "payload": i},
                           headers=headers)  # fmt: skip
            assert r.status_code == 202, r.text
            ids.append(r.json()["id"])
        until(lambda: len(system.apis()) == 2 and apis[0] not in system.apis())
        for job_id in ids:
            wait_job(system, headers, job_id, "succeeded")
