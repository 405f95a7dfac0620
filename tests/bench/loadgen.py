"""A lean HTTP/1.1 load generator: closed loops (N clients, each waits for its answer) and open
loops (requests leave on a fixed schedule, whatever the answers do).

httpx spends about a millisecond of CPU per request; on a 2-core machine shared with the
services that caps what a bench can offer well below what the API takes. This one writes
prebuilt request bytes on keep-alive connections and reads only the status line, the
``Content-Length`` and the body, about 30 µs a request.

Open-loop latency is measured from each request's *scheduled* departure, not from when a
connection became free: a stalled server then shows its queueing delay instead of slowing
the load down to hide it (coordinated omission).

``python -m tests.bench.loadgen --url http://127.0.0.1:8000/v1/jobs --token T --rate 500``
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from tests.bench.report import percentile


@dataclass(frozen=True)
class Target:
    """One request, sent again and again: ``POST path`` with ``body`` to ``host:port``."""

    host: str
    port: int
    path: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def post(cls, url: str, body: bytes, token: str | None = None) -> Target:
        parts = urlsplit(url)
        headers = [("Content-Type", "application/json")]
        if token:
            headers.append(("Authorization", f"Bearer {token}"))
        return cls(
            parts.hostname or "127.0.0.1", parts.port or 80, parts.path, body, tuple(headers)
        )

    def request(self) -> bytes:
        head = [f"POST {self.path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        head += [f"{k}: {v}" for k, v in self.headers]
        head.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(head) + "\r\n\r\n").encode() + self.body


@dataclass
class Tally:
    """What came back: latencies (ms) of the answered requests and a count per status."""

    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    def accepted(self) -> int:
        return sum(n for status, n in self.statuses.items() if 200 <= status < 300)

    def rate(self) -> float:
        return self.accepted() / self.seconds if self.seconds else 0.0

    def quantile(self, q: float) -> float | None:
        ordered = sorted(self.latencies_ms)
        return percentile(ordered, q) if ordered else None


class Connection:
    """One keep-alive connection; ``send`` writes a request and returns the answer's status."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, target: Target) -> Connection:
        reader, writer = await asyncio.open_connection(target.host, target.port)
        return cls(reader, writer)

    async def send(self, request: bytes) -> int:
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
                break
        if length:
            await self.reader.readexactly(length)
        if b"\r\nconnection: close" in head.lower():
            self.close()
        return status

    @property
    def closed(self) -> bool:
        return self.writer.is_closing()

    def close(self) -> None:
        self.writer.close()


async def closed_loop(target: Target, clients: int, requests: int) -> Tally:
    """``clients`` connections, each sending its next request when the last one is answered,
    until ``requests`` have been sent in all."""
    tally = Tally()
    request = target.request()
    left = iter(range(requests))

    async def client() -> None:
        conn = await Connection.open(target)
        try:
            for _ in left:
                if conn.closed:
                    conn = await Connection.open(target)
                t = time.perf_counter()
                tally.statuses[await conn.send(request)] += 1
                tally.latencies_ms.append((time.perf_counter() - t) * 1000)
        finally:
            conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    tally.seconds = time.perf_counter() - t0
    return tally


async def open_loop(
    target: Target,
    rate: float,
    seconds: float,
    connections: int = 64,
    max_connections: int = 1024,
) -> Tally:
    """Send ``rate`` requests a second for ``seconds``, each at its scheduled instant on an
    idle connection (``connections`` are opened before the clock starts, as clients keep
    theirs; a new one if none is idle, up to ``max_connections``; beyond that the request
    waits, and its wait counts in its latency). Returns once every request is answered or
    has failed."""
    tally = Tally()
    request = target.request()
    idle: list[Connection] = list(
        await asyncio.gather(*(Connection.open(target) for _ in range(connections)))
    )
    opened = len(idle)
    freed = asyncio.Condition()
    loop = asyncio.get_running_loop()

    async def one(due: float) -> None:
        nonlocal opened
        conn = None
        try:
            async with freed:
                while not idle and opened >= max_connections:
                    await freed.wait()
                if idle:
                    conn = idle.pop()
                else:
                    opened += 1
            if conn is None:
                conn = await Connection.open(target)
            status = await conn.send(request)
            tally.latencies_ms.append((loop.time() - due) * 1000)
            tally.statuses[status] += 1
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            tally.errors[type(exc).__name__] += 1
            if conn is not None:
                conn.close()
        async with freed:
            if conn is not None and not conn.closed:
                idle.append(conn)
            else:
                opened -= 1
            freed.notify()

    total = int(rate * seconds)
    t0 = loop.time()
    tasks = []
    for i in range(total):
        due = t0 + i / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(due)))
    await asyncio.gather(*tasks)
    tally.seconds = max(seconds, loop.time() - t0)
    for conn in idle:
        conn.close()
    return tally


def describe(tally: Tally) -> str:
    q = {p: tally.quantile(p) for p in (50, 99, 99.9)}
    latency = ", ".join(f"p{p:g} {v:.1f} ms" for p, v in q.items() if v is not None)
    statuses = " ".join(f"{s}x{n}" for s, n in sorted(tally.statuses.items()))
    errors = " ".join(f"{e}x{n}" for e, n in sorted(tally.errors.items()))
    return f"{tally.rate():,.0f} accepted/s [{statuses}{' ' + errors if errors else ''}] {latency}"


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m tests.bench.loadgen")
    p.add_argument("--url", required=True)
    p.add_argument("--token")
    p.add_argument("--body", default='{"type":"noop"}')
    p.add_argument("--clients", type=int, help="closed loop with this many clients")
    p.add_argument("--requests", type=int, default=5000, help="closed loop: requests in all")
    p.add_argument("--rate", type=float, help="open loop: requests a second")
    p.add_argument("--seconds", type=float, default=10.0, help="open loop: how long")
    args = p.parse_args(argv)
    target = Target.post(args.url, args.body.encode(), args.token)
    if args.rate:
        tally = asyncio.run(open_loop(target, args.rate, args.seconds))
    else:
        tally = asyncio.run(closed_loop(target, args.clients or 64, args.requests))
    print(describe(tally))


if __name__ == "__main__":
    main()
