"""Slow and oversized clients against the server ``jobq api`` runs, with one-second deadlines,
over raw sockets: each attack ends with the server closing the connection within its deadline,
and ordinary use of a keep-alive connection is untouched."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from collections.abc import AsyncIterator, Coroutine, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import replace
from typing import Any

import pytest
from litestar import Litestar, Request, get, post

from shared.config import Settings
from tests.conftest import Bearer
from tests.integration.conftest import serving

pytestmark = pytest.mark.integration

IDLE = HEADER = BODY = 1.0
#: How late past its deadline the server may close (its timer, the event loop, a busy machine).
SLACK = 1.5
#: Seconds between one byte and the next from a slow client: well within every deadline.
DRIP = 0.2

Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@pytest.fixture
async def port(settings: Settings) -> AsyncIterator[int]:
    short = replace(
        settings,
        http_idle_timeout_seconds=IDLE,
        http_header_timeout_seconds=HEADER,
        http_body_timeout_seconds=BODY,
    )
    async with serving(short) as p:
        yield p


@asynccontextmanager
async def connection(port: int, buffer: int | None = None) -> AsyncIterator[Conn]:
    """A raw connection; with ``buffer``, the client buffers few more bytes than that (in the
    kernel and in its reader), so what it has not read stays with the server."""
    sock = socket.socket()
    if buffer:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=buffer or 2**16)
    try:
        yield reader, writer
    finally:
        writer.close()
        with suppress(OSError):
            await writer.wait_closed()


@asynccontextmanager
async def meanwhile(sending: Coroutine[Any, Any, None]) -> AsyncIterator[None]:
    """Runs ``sending`` while the block runs (a client's writes; the server may hang up)."""

    async def send() -> None:
        with suppress(ConnectionError):
            await sending

    task = asyncio.create_task(send())
    try:
        yield
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task


async def drip(writer: asyncio.StreamWriter, data: bytes) -> None:
    """Sends ``data`` a byte every ``DRIP`` seconds."""
    for i in range(len(data)):
        writer.write(data[i : i + 1])
        await writer.drain()
        await asyncio.sleep(DRIP)


async def closed_within(
    reader: asyncio.StreamReader, seconds: float, chunk: int = 65536, pace: float = 0
) -> bytes:
    """All the server sends until it closes the connection, read ``chunk`` bytes at a time
    every ``pace`` seconds; fails if the connection is open after ``seconds``."""

    async def until_closed() -> bytes:
        data = b""
        with suppress(ConnectionResetError):
            while part := await reader.read(chunk):
                data += part
                await asyncio.sleep(pace)
        return data

    try:
        return await asyncio.wait_for(until_closed(), seconds)
    except TimeoutError:
        pytest.fail(f"the server kept the connection open for {seconds} s")


def request(method: str, path: str, headers: Mapping[str, str] | None = None) -> bytes:
    """A request head (a body, if any, follows it)."""
    lines = [
        f"{method} {path} HTTP/1.1",
        "Host: jobq",
        *(f"{k}: {v}" for k, v in (headers or {}).items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def exchange(conn: Conn, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
    """Sends one request, reads its whole answer: status and body."""
    reader, writer = conn
    writer.write(head + body)
    await writer.drain()
    return await answer_of(reader)


async def answer_of(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """Reads one answer: status and body."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = re.search(rb"\r\ncontent-length: *(\d+)", head, re.IGNORECASE)
    assert length, head
    return int(head.split()[1]), await reader.readexactly(int(length[1]))


def status_of(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer[:100]
    return int(answer.split()[1])


def big_batch(jobs: int) -> bytes:
    """A legal batch of ``jobs`` jobs of 200 kB each."""
    return json.dumps({"jobs": [{"type": "noop", "payload": "x" * 200_000}] * jobs}).encode()


def batch_head(auth: Mapping[str, str], body: bytes) -> bytes:
    headers = {**auth, "Content-Type": "application/json", "Content-Length": str(len(body))}
    return request("POST", "/v1/jobs/batch", headers)


async def test_a_connection_that_sends_nothing_is_closed_at_the_idle_timeout(port: int) -> None:
    async with connection(port) as (reader, _):
        started = time.monotonic()
        assert await closed_within(reader, IDLE + SLACK) == b""
        assert time.monotonic() - started >= IDLE - 0.05


async def test_blank_lines_do_not_put_off_the_idle_timeout(port: int) -> None:
    """The parser skips them: no request begins, so the idle deadline still runs."""
    async with connection(port) as (reader, writer), meanwhile(drip(writer, b"\r\n" * 100)):
        assert await closed_within(reader, IDLE + SLACK) == b""


async def test_a_request_head_sent_a_byte_at_a_time_is_cut_off_at_the_header_timeout(
    port: int,
) -> None:
    head = request("GET", "/health", {"X-Slow": "." * 100})
    async with connection(port) as (reader, writer), meanwhile(drip(writer, head)):
        started = time.monotonic()
        answer = await closed_within(reader, HEADER + SLACK)
        took = time.monotonic() - started
    assert status_of(answer) == 408
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["status"] == 408
    assert took >= HEADER - 0.05  # the deadline, not a refusal of the bytes themselves


async def test_a_request_head_over_the_cap_is_answered_431_and_closed(
    port: int, settings: Settings
) -> None:
    head = request("GET", "/health", {"X-Big": "x" * settings.http_max_header_bytes})
    async with connection(port) as (reader, writer):
        writer.write(head)
        await writer.drain()
        answer = await closed_within(reader, SLACK)
    assert status_of(answer) == 431


async def test_an_endless_header_is_answered_431_before_the_header_timeout(port: int) -> None:
    """The parser reports a header only once it is whole: one that never ends is counted as
    it arrives."""

    async def flood(writer: asyncio.StreamWriter) -> None:
        writer.write(b"GET /health HTTP/1.1\r\nHost: jobq\r\nX-Endless: ")
        for _ in range(256):  # 1 MiB at most
            writer.write(b"x" * 4096)
            await writer.drain()
            await asyncio.sleep(0.01)

    async with connection(port) as (reader, writer), meanwhile(flood(writer)):
        answer = await closed_within(reader, HEADER)
    assert status_of(answer) == 431


@pytest.mark.parametrize(("authorized", "status"), [(True, 408), (False, 401)])
async def test_a_request_body_sent_a_byte_at_a_time_is_cut_off_at_the_body_timeout(
    port: int, bearer: Bearer, authorized: bool, status: int
) -> None:
    """With a token the app waits for the body: ``408``. Without one it answers at once; the
    body still trickling after that answer does not hold the connection either."""
    auth = await bearer() if authorized else {}
    head = request(
        "POST", "/v1/jobs", {**auth, "Content-Type": "application/json", "Content-Length": "1000"}
    )
    async with connection(port) as (reader, writer):
        writer.write(head)
        await writer.drain()
        started = time.monotonic()
        async with meanwhile(drip(writer, b"{" + b" " * 999)):
            answer = await closed_within(reader, BODY + SLACK)
            took = time.monotonic() - started
    assert status_of(answer) == status
    assert took >= BODY - 0.05


async def test_a_keep_alive_connection_serves_pauses_large_heads_and_large_bodies(
    port: int, bearer: Bearer
) -> None:
    auth = await bearer()
    body = big_batch(20)
    async with connection(port) as conn:
        status, _ = await exchange(conn, request("GET", "/health", {"X-Pad": "x" * 12_000}))
        assert status == 200
        await asyncio.sleep(IDLE / 2)  # a pause shorter than the idle timeout
        status, answer = await exchange(conn, batch_head(auth, body), body)
        assert status == 202
        assert len(json.loads(answer)["items"]) == 20
        await asyncio.sleep(IDLE / 2)
        status, _ = await exchange(conn, request("GET", "/health"))
        assert status == 200


async def test_an_answer_read_a_trickle_at_a_time_is_dropped_at_the_idle_timeout(
    port: int, bearer: Bearer
) -> None:
    """The answer echoes 8 MB of payloads, more than the kernel buffers by default (4 MiB at
    most), so some of it waits in the server for a client that reads 40 kB/s."""
    auth = await bearer()
    body = big_batch(40)
    async with connection(port, buffer=4096) as (reader, writer):
        writer.write(batch_head(auth, body) + body)
        await writer.drain()
        # Storing the batch comes before the answer, and the deadline runs from its end.
        answer = await closed_within(reader, 5 + IDLE + SLACK, chunk=4096, pace=0.1)
    assert status_of(answer) == 202
    assert len(answer) < len(body)


@get("/slow")
async def slow() -> str:
    await asyncio.sleep(1.5 * BODY)
    return "slow"


@post("/size")
async def size(request: Request[Any, Any, Any]) -> int:
    return len(await request.body())


async def test_a_pipelined_request_waiting_its_turn_is_not_timed_out(settings: Settings) -> None:
    """uvicorn reads no further while an earlier request is answered: the body that waits in
    the kernel meanwhile is not the client's delay."""
    body = b"x" * 2**20  # more than one read: the rest waits
    head = request("POST", "/size", {"Content-Length": str(len(body))})
    short = replace(settings, http_body_timeout_seconds=BODY)
    async with (
        serving(short, Litestar([slow, size], logging_config=None)) as port,
        connection(port) as (reader, writer),
    ):
        writer.write(request("GET", "/slow") + head + body)
        await writer.drain()
        assert await answer_of(reader) == (200, b"slow")
        assert await answer_of(reader) == (201, str(len(body)).encode())
