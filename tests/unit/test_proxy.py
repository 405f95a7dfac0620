"""The fault suite's TCP proxy (``tests.chaos.proxy``), in front of an echo server on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from tests.chaos.proxy import Proxy

Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class Echo:
    """An echo server that keeps its side of every connection (to reset one)."""

    def __init__(self) -> None:
        self.sides: list[asyncio.StreamWriter] = []

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.sides.append(writer)
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()


@asynccontextmanager
async def echo_proxy(echo: Echo | None = None) -> AsyncIterator[Proxy]:
    server = await asyncio.start_server(echo or Echo(), "127.0.0.1", 0)
    proxy = await Proxy.to(f"tcp://127.0.0.1:{server.sockets[0].getsockname()[1]}")
    try:
        yield proxy
    finally:
        await proxy.close()
        server.close()
        await server.wait_closed()


@asynccontextmanager
async def connected(proxy: Proxy) -> AsyncIterator[Conn]:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def round_trip(conn: Conn, data: bytes) -> bytes:
    reader, writer = conn
    writer.write(data)
    await writer.drain()
    return await reader.readexactly(len(data))


def test_url_names_the_proxy_in_place_of_the_server() -> None:
    proxy = Proxy("postgresql+asyncpg://jobq:secret@db.internal/jobq?ssl=off")
    proxy.port = 40000
    assert proxy.target == ("db.internal", 5432)
    assert proxy.url == "postgresql+asyncpg://jobq:secret@127.0.0.1:40000/jobq?ssl=off"


async def test_bytes_pass_through_unchanged_and_in_order() -> None:
    data = os.urandom(1024 * 1024)
    async with echo_proxy() as proxy, connected(proxy) as conn:
        assert await round_trip(conn, data) == data
        assert proxy.connections == 1


async def test_latency_delays_each_chunk_each_way_and_keeps_their_order() -> None:
    loop = asyncio.get_running_loop()
    async with echo_proxy() as proxy, connected(proxy) as (reader, writer):
        proxy.delay(0.1)
        t0 = loop.time()
        assert await round_trip((reader, writer), b"ping") == b"ping"
        assert 0.2 <= loop.time() - t0 < 0.5
        # Twenty chunks 10 ms apart: in flight together, so they take one round trip more
        # than it takes to send them, not twenty.
        t0 = loop.time()
        for i in range(20):
            writer.write(b"%02d" % i)
            await asyncio.sleep(0.01)
        assert await reader.readexactly(40) == b"".join(b"%02d" % i for i in range(20))
        assert loop.time() - t0 < 1.0  # twenty round trips one after another: 4 s


async def test_a_blackhole_answers_nothing_and_holds_every_connection_until_healed() -> None:
    async with echo_proxy() as proxy, connected(proxy) as old:
        assert await round_trip(old, b"before") == b"before"
        proxy.blackhole()
        async with connected(proxy) as new:  # accepted, but forwarded nowhere
            for reader, writer in (old, new):
                writer.write(b"held")
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(reader.read(4), 0.3)
            assert proxy.connections == 2
            proxy.pass_through()
            for reader, _ in (old, new):
                assert await asyncio.wait_for(reader.readexactly(4), 1) == b"held"


async def test_a_blackhole_hides_the_servers_reset_until_healed() -> None:
    echo = Echo()
    async with echo_proxy(echo) as proxy, connected(proxy) as (reader, writer):
        assert await round_trip((reader, writer), b"up") == b"up"
        proxy.blackhole()
        side = echo.sides[0]
        side.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
        )
        side.transport.abort()  # a reset (RST), not a close
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.read(1), 0.3)
        proxy.pass_through()
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(1), 1)


async def test_cut_resets_every_open_connection() -> None:
    async with echo_proxy() as proxy:
        async with connected(proxy) as (reader, writer):
            assert await round_trip((reader, writer), b"x") == b"x"
            assert proxy.cut() == 1
            with pytest.raises(ConnectionResetError):
                await asyncio.wait_for(reader.read(1), 1)
        assert proxy.connections == 0
        async with connected(proxy) as conn:
            assert await round_trip(conn, b"again") == b"again"
