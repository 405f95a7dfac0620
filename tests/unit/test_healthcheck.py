"""``jobq health`` against a tiny local HTTP server standing in for a service's endpoints."""

from __future__ import annotations

import http.server
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.cli import main
from services.healthcheck import container_service, probe


class Endpoints(http.server.BaseHTTPRequestHandler):
    """``/health`` is alive; ``/health/ready`` is not (a dependency is down)."""

    def do_GET(self) -> None:
        self.send_response({"/health": 200, "/health/ready": 503}.get(self.path, 404))
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: pytest shows stderr of failing tests only, and this is noise there."""


@pytest.fixture
def port() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Endpoints)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        found: int = sock.getsockname()[1]
    return found


def cmdline(tmp_path: Path, *argv: str) -> Path:
    path = tmp_path / "cmdline"
    path.write_bytes("\0".join(argv).encode() + b"\0")
    return path


def test_a_worker_answering_200_on_health_is_healthy(port: int) -> None:
    env = {"JOBQ_METRICS_HOST": "0.0.0.0", "JOBQ_WORKER_METRICS_PORT": str(port)}
    healthy, line = probe("worker", env=env)
    assert healthy, line
    assert line == f"http://127.0.0.1:{port}/health: ok"


def test_ready_asks_health_ready_and_a_503_is_unhealthy(port: int) -> None:
    env = {"JOBQ_SCHEDULER_METRICS_PORT": str(port)}
    assert probe("scheduler", ready=True, env=env) == (
        False,
        f"http://127.0.0.1:{port}/health/ready answered 503",
    )


def test_the_api_is_asked_on_its_own_port(port: int) -> None:
    assert probe("api", env={"JOBQ_API_HOST": "0.0.0.0", "JOBQ_API_PORT": str(port)})[0]


def test_a_refused_connection_is_unhealthy(closed_port: int) -> None:
    healthy, line = probe("worker", env={"JOBQ_WORKER_METRICS_PORT": str(closed_port)})
    assert not healthy
    assert "refused" in line.lower()


def test_without_a_name_the_service_is_the_one_the_container_runs(
    port: int, tmp_path: Path
) -> None:
    first = cmdline(tmp_path, "/usr/local/bin/python", "/opt/jobq/bin/jobq", "scheduler")
    env = {"JOBQ_SCHEDULER_METRICS_PORT": str(port), "JOBQ_WORKER_METRICS_PORT": "1"}
    assert probe(None, env=env, cmdline=first)[0]


def test_the_service_is_read_after_jobq_even_behind_an_init(tmp_path: Path) -> None:
    behind_tini = cmdline(tmp_path, "/sbin/docker-init", "--", "jobq", "worker")
    assert container_service(behind_tini) == "worker"
    a_client_named_api = cmdline(tmp_path, "jobq", "clients", "create", "--name", "api")
    assert container_service(a_client_named_api) is None
    assert container_service(tmp_path / "missing") is None


def test_a_container_that_runs_no_service_is_unhealthy(tmp_path: Path) -> None:
    healthy, line = probe(None, env={}, cmdline=cmdline(tmp_path, "jobq", "migrate"))
    assert not healthy
    assert "name the service" in line


def test_a_port_of_0_is_unhealthy_because_nothing_can_vouch_for_the_service() -> None:
    assert probe("worker", env={"JOBQ_WORKER_METRICS_PORT": "0"}) == (
        False,
        "jobq health: the worker's health endpoints are off (its port is 0)",
    )


def test_a_bad_setting_is_unhealthy_not_a_crash() -> None:
    healthy, line = probe("api", env={"JOBQ_API_PORT": "eighty"})
    assert not healthy
    assert "JOBQ_API_PORT" in line


def test_the_command_exits_0_when_healthy_and_1_when_not(
    port: int, closed_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOBQ_WORKER_METRICS_PORT", str(port))
    monkeypatch.setenv("JOBQ_SCHEDULER_METRICS_PORT", str(closed_port))
    for argv, code in ((["worker"], 0), (["worker", "--ready"], 1), (["scheduler"], 1)):
        with pytest.raises(SystemExit) as exited:
            main(["health", *argv])
        assert exited.value.code == code, argv


def test_the_health_check_never_imports_litestar(closed_port: int) -> None:
    code = (
        "import sys\n"
        "from services.cli import main\n"
        "try:\n"
        "    main(['health', 'worker'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "assert 'litestar' not in sys.modules, 'jobq health imported litestar'\n"
    )
    env = {"JOBQ_WORKER_METRICS_PORT": str(closed_port)}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
