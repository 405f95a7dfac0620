"""A TCP proxy the fault tests start in front of PostgreSQL or RabbitMQ, for the network faults
one host cannot make otherwise without root: latency, partitions, half-open connections.

A proxy listens on a free loopback port and forwards each connection to its target. Its mode
changes at run time and applies at once to every connection, open or new:

- ``pass_through()``: bytes go straight on;
- ``delay(up, down)``: each chunk waits ``up`` seconds on its way to the server and ``down``
  on its way back, in order; chunks in flight overlap (latency, not a bandwidth limit);
- ``blackhole()``: nothing goes either way and no socket is closed, like a partition: the
  peers' connections stay open and answer nothing (half-open), a new connection is accepted
  and waits too; ``pass_through()`` then delivers what waited, as TCP would once a
  partition heals;
- ``cut()``: every open connection is reset (RST), on both sides.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

Direction = Literal["up", "down"]
CHUNK = 64 * 1024
#: Chunks one direction holds before it stops reading (TCP's window then holds back the
#: sender), so a blackhole cannot fill memory.
HELD_CHUNKS = 64
DEFAULT_PORTS = {"postgresql": 5432, "amqp": 5672}


@dataclass(eq=False)
class Link:
    """One proxied connection: the client's side, the server's once connected."""

    client: asyncio.StreamWriter
    task: asyncio.Task[None]
    server: asyncio.StreamWriter | None = None

    def abort(self) -> None:
        """Both sides closed with a reset (RST) rather than a close (FIN)."""
        for writer in (self.client, self.server):
            if writer is not None:
                with contextlib.suppress(OSError):
                    sock = writer.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()

    def reset(self) -> None:
        self.abort()
        self.task.cancel()


class Proxy:
    """A proxy to ``target`` (host, port); ``url`` is ``target_url`` through it."""

    def __init__(self, target_url: str) -> None:
        parts = urlsplit(target_url)
        scheme = parts.scheme.split("+")[0]
        self.target = (parts.hostname or "127.0.0.1", parts.port or DEFAULT_PORTS[scheme])
        self.target_url = target_url
        self.latency: dict[Direction, float] = {"up": 0.0, "down": 0.0}
        self.port = 0
        self._forwarding = asyncio.Event()
        self._forwarding.set()
        #: When each connection was accepted (loop time): a client that gave up on a silent
        #: connection shows as a new one.
        self.opened: list[float] = []
        self._links: set[Link] = set()
        self._server: asyncio.Server | None = None

    @classmethod
    async def to(cls, target_url: str) -> Proxy:
        """A started proxy in front of the server ``target_url`` names."""
        proxy = cls(target_url)
        proxy._server = await asyncio.start_server(proxy._serve, "127.0.0.1", 0)
        proxy.port = proxy._server.sockets[0].getsockname()[1]
        return proxy

    @property
    def url(self) -> str:
        """``target_url`` with this proxy's address in place of the server's."""
        parts = urlsplit(self.target_url)
        userinfo, at, _ = parts.netloc.rpartition("@")
        return urlunsplit(parts._replace(netloc=f"{userinfo}{at}127.0.0.1:{self.port}"))

    @property
    def connections(self) -> int:
        return len(self._links)

    def pass_through(self) -> None:
        self.latency = {"up": 0.0, "down": 0.0}
        self._forwarding.set()

    def delay(self, up: float, down: float | None = None) -> None:
        """Add ``up`` seconds towards the server and ``down`` (default: the same) back."""
        self.latency = {"up": up, "down": up if down is None else down}
        self._forwarding.set()

    def blackhole(self) -> None:
        self._forwarding.clear()

    def cut(self) -> int:
        """Reset every open connection; returns how many."""
        links = list(self._links)
        for link in links:
            link.reset()
        return len(links)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self.cut()
            await self._server.wait_closed()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        # In a task of its own, which ``cut`` cancels: asyncio logs a connection callback's
        # cancellation as an error.
        self.opened.append(asyncio.get_running_loop().time())
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.create_task(self._forward(client_r, client_w))

    async def _forward(
        self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        link = Link(client_w, task)
        self._links.add(link)
        try:
            await self._forwarding.wait()  # a blackhole holds new connections too
            try:
                server_r, link.server = await asyncio.open_connection(*self.target)
            except OSError:
                return  # the server is down: the client sees its connection closed
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._pump(client_r, link.server, "up"))
                tg.create_task(self._pump(server_r, client_w, "down"))
        except* OSError:
            link.abort()  # one side was reset: so is the other
        finally:
            self._links.discard(link)
            for writer in (client_w, link.server):
                if writer is not None:
                    writer.close()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: Direction
    ) -> None:
        """Forward one direction, each chunk once its latency passed, until the end of file or
        a reset; both wait their turn like any chunk, so a blackhole hides a peer's close too."""
        loop = asyncio.get_running_loop()
        held: asyncio.Queue[tuple[float, bytes | None]] = asyncio.Queue(HELD_CHUNKS)

        async def receive() -> None:
            while True:
                chunk: bytes | None
                try:
                    chunk = await reader.read(CHUNK)
                except OSError:
                    chunk = None  # reset
                await held.put((loop.time() + self.latency[direction], chunk))
                if not chunk:
                    return

        async with asyncio.TaskGroup() as tg:
            tg.create_task(receive())
            while True:
                due, chunk = await held.get()
                await self._until(due)
                if chunk is None:
                    raise ConnectionResetError(f"the {direction}stream peer reset its connection")
                if not chunk:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                writer.write(chunk)
                await writer.drain()

    async def _until(self, due: float) -> None:
        """Until the loop time ``due`` has passed while forwarding (a blackhole holds longer)."""
        loop = asyncio.get_running_loop()
        while True:
            await self._forwarding.wait()
            wait = due - loop.time()
            if wait <= 0:
                return
            await asyncio.sleep(wait)
