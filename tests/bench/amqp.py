"""Small RabbitMQ helpers for the bench (passive declares on throwaway channels)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence

import aio_pika
import aiormq
from aio_pika.abc import AbstractQueue

from tests.bench import BenchError
from tests.procs import Proc, check_alive


@contextlib.asynccontextmanager
async def existing_queue(url: str, queue: str) -> AsyncIterator[AbstractQueue | None]:
    """``queue`` by passive declare on its own connection, or ``None`` if it does not exist."""
    conn = await aio_pika.connect(url)
    try:
        channel = await conn.channel()
        try:
            q: AbstractQueue | None = await channel.declare_queue(queue, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            q = None
        yield q
    finally:
        await conn.close()


async def queue_state(url: str, queue: str) -> tuple[int, int] | None:
    """``(ready messages, consumers)`` of ``queue``, or ``None`` if it does not exist."""
    async with existing_queue(url, queue) as q:
        if q is None:
            return None
        result = q.declaration_result
        return int(result.message_count or 0), int(result.consumer_count or 0)


async def purge(url: str, queue: str) -> int:
    """Drop the ready messages of ``queue`` (if it exists); returns how many."""
    async with existing_queue(url, queue) as q:
        if q is None:
            return 0
        result = await q.purge()
        return int(result.message_count or 0)


async def delete(url: str, queues: list[str], exchanges: list[str]) -> None:
    """Delete queues and exchanges if they exist (a fresh channel per object: a missing one
    closes its channel)."""
    conn = await aio_pika.connect(url)
    try:
        for name in queues:
            channel = await conn.channel()
            with contextlib.suppress(aiormq.exceptions.AMQPError):
                await channel.queue_delete(name)
        for name in exchanges:
            channel = await conn.channel()
            with contextlib.suppress(aiormq.exceptions.AMQPError):
                await channel.exchange_delete(name)
    finally:
        await conn.close()


async def wait_consumers(
    url: str, queue: str, count: int, procs: Sequence[Proc], within: float = 60.0
) -> None:
    """Wait until ``queue`` has ``count`` consumers, failing early if a process in ``procs``
    died (the workers that should be consuming it)."""
    deadline = time.monotonic() + within
    state: tuple[int, int] | None = None
    while time.monotonic() < deadline:
        check_alive(procs)
        state = await queue_state(url, queue)
        if state is not None and state[1] >= count:
            return
        await asyncio.sleep(0.1)
    raise BenchError(f"{count} consumers expected on {queue}; (ready, consumers): {state}")
