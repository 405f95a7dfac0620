"""Runs the API under uvicorn: one process, or several sharing one port (docs/design.md §7)."""

from __future__ import annotations

import shutil
import socket
import tempfile
from typing import TYPE_CHECKING

import uvicorn

from services.api.app import create_app
from services.api.server import server_config
from services.api.shedding import LoadShedder
from services.supervisor import Child, Supervisor, service_argv
from shared.config import Settings
from shared.errors import ConfigError
from shared.telemetry import start_tracing

if TYPE_CHECKING:
    from services.api.shedding import ASGIApp


def main(
    settings: Settings, host: str | None = None, port: int | None = None, fd: int | None = None
) -> None:
    """Serve in this process; ``fd``: on a listening socket inherited from ``main_processes``."""
    app: ASGIApp = create_app(settings, start_tracing("api"))
    if settings.submit_max_in_flight > 0:
        app = LoadShedder(app, settings.submit_max_in_flight)
    config = server_config(settings, app, host, port)
    if fd is None:
        uvicorn.Server(config).run()
        return
    uvicorn.Server(config).run(sockets=[socket.socket(fileno=fd)])


def main_processes(
    settings: Settings, processes: int, host: str | None = None, port: int | None = None
) -> int:
    """``processes`` API processes on one port, each with its own pools and submit path,
    supervised (restarted if one dies; stopped together on SIGINT or SIGTERM).

    This process binds the port and the children accept from its socket: whichever is free
    takes the next connection. (With ``SO_REUSEPORT`` the kernel chose by a hash of the
    connection, and 4 long-lived connections often all landed on one process: batch
    throughput was that of one process in about half the runs.)
    """
    host, port = host or settings.api_host, port or settings.api_port
    try:
        sock = _socket(host, port)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    # A scrape of the port reaches any one process: each keeps its metrics in this directory,
    # so that any of them answers for all (shared.metrics).
    metrics_dir = tempfile.mkdtemp(prefix="jobq-api-metrics-")
    try:
        with sock:
            argv = service_argv(
                "api", "--fd", str(sock.fileno()), "--host", host, "--port", str(port)
            )
            env = {"PROMETHEUS_MULTIPROC_DIR": metrics_dir}
            children = [
                Child(f"api-{i + 1}", argv, pass_fds=(sock.fileno(),), env=env)
                for i in range(processes)
            ]
            return Supervisor(children, settings.shutdown_grace_seconds).run()
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _socket(host: str, port: int) -> socket.socket:
    """A listening socket for ``host:port``, as uvicorn makes its own."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock
