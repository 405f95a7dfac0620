"""``/metrics``, ``/health`` and ``/health/ready`` on a port of their own, for the worker and the
scheduler (docs/operations.md §1); the API serves the same paths on its own port.

A few lines of asyncio rather than an HTTP framework: the worker never imports Litestar, the
answers are three fixed documents, and every connection is closed after one answer, with a
deadline on reading the request, so a probe or a scraper cannot hold anything open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from prometheus_client import CONTENT_TYPE_LATEST

from shared.errors import ConfigError
from shared.liveness import Liveness
from shared.metrics import Metrics

log = logging.getLogger("jobq.ops")

#: How long a client may take to send its request line and headers.
READ_SECONDS = 5.0
MAX_HEAD_BYTES = 8192

#: ``None`` when ready, else why not (one line).
Readiness = Callable[[], Awaitable[str | None]]


class OpsServer:
    """Serves one process's metrics and health until ``close``."""

    def __init__(
        self,
        metrics: Metrics,
        liveness: Liveness,
        ready: Readiness,
        before_scrape: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.metrics = metrics
        self.liveness = liveness
        self.ready = ready
        self.before_scrape = before_scrape
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int, setting: str) -> None:
        """Listen on ``host:port``; a port taken is one line naming ``setting``."""
        try:
            self._server = await asyncio.start_server(
                self._answer, host, port, limit=MAX_HEAD_BYTES
            )
        except OSError as exc:
            raise ConfigError(
                f"cannot serve metrics on {host}:{port} ({exc.strerror or exc}): set {setting}"
                " to a free port, or 0 to turn metrics and health off"
            ) from None
        log.info("metrics and health", extra={"url": f"http://{host}:{port}/metrics"})

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(READ_SECONDS):
                head = await reader.readuntil(b"\r\n\r\n")
            status, kind, body = await self._route(head)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            status, kind, body = "400 Bad Request", "text/plain", b"bad request\n"
        except Exception:
            log.exception("metrics or health answer failed")
            status, kind, body = "500 Internal Server Error", "text/plain", b"error\n"
        writer.write(
            f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n".encode()
            + body
        )
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    async def _route(self, head: bytes) -> tuple[str, str, bytes]:
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
        method, path = request_line[0], request_line[1] if len(request_line) > 1 else ""
        if method != "GET":
            return "405 Method Not Allowed", "text/plain", b"GET only\n"
        path = path.split("?", 1)[0]
        if path == "/metrics":
            if self.before_scrape is not None:
                await self.before_scrape()
            return "200 OK", CONTENT_TYPE_LATEST, self.metrics.exposition()
        if path == "/health":
            stuck = self.liveness.stuck()
            if stuck:
                late = ", ".join(f"{n} ({self.liveness.age(n):.0f} s)" for n in stuck)
                return "503 Service Unavailable", "text/plain", f"stuck: {late}\n".encode()
            return "200 OK", "text/plain", b"ok\n"
        if path == "/health/ready":
            problem = await self.ready()
            if problem is not None:
                return "503 Service Unavailable", "text/plain", f"{problem}\n".encode()
            return "200 OK", "text/plain", b"ready\n"
        return "404 Not Found", "text/plain", b"/metrics, /health or /health/ready\n"


@asynccontextmanager
async def serving(server: OpsServer, host: str, port: int, setting: str) -> AsyncIterator[None]:
    """``server`` listening on ``host:port`` for the body of the ``with``; port 0: not at all."""
    if port == 0:
        yield
        return
    await server.start(host, port, setting)
    try:
        yield
    finally:
        await server.close()
