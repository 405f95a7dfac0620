"""Runs the API under uvicorn: one process, or several sharing one port (docs/design.md §7)."""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

import uvicorn

from services.api.app import create_app
from services.api.server import server_config
from services.api.shedding import LoadShedder
from services.supervisor import Child, Supervisor, service_argv
from shared.config import Settings
from shared.errors import ConfigError

if TYPE_CHECKING:
    from services.api.shedding import ASGIApp


def main(
    settings: Settings, host: str | None = None, port: int | None = None, shared: bool = False
) -> None:
    """Serve in this process; ``shared``: on a port other processes bind too (the kernel
    spreads new connections between them, ``SO_REUSEPORT``)."""
    app: ASGIApp = create_app(settings)
    if settings.submit_max_in_flight > 0:
        app = LoadShedder(app, settings.submit_max_in_flight)
    config = server_config(settings, app, host, port)
    if not shared:
        uvicorn.Server(config).run()
        return
    sock = _socket(config.host, config.port, reuse_port=True)
    uvicorn.Server(config).run(sockets=[sock])


def main_processes(
    settings: Settings, processes: int, host: str | None = None, port: int | None = None
) -> int:
    """``processes`` API processes on one port, each with its own pools and submit path,
    supervised (restarted if one dies; stopped together on SIGINT or SIGTERM)."""
    host, port = host or settings.api_host, port or settings.api_port
    try:
        _socket(host, port, reuse_port=False).close()  # taken by something else: say so now
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    argv = ["--shared-port", "--host", host, "--port", str(port)]
    children = [Child(f"api-{i + 1}", service_argv("api", *argv)) for i in range(processes)]
    return Supervisor(children, settings.shutdown_grace_seconds).run()


def _socket(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock
