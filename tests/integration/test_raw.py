"""Statements on asyncpg under the engine's pool: a broken or interrupted connection is never
handed out again, and a lost one is a transient ``DependencyUnavailable``."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.config import Settings
from shared.db import raw
from shared.db.engine import make_engine
from shared.db.errors import is_transient
from shared.errors import DependencyUnavailable

pytestmark = pytest.mark.integration


@pytest.fixture
async def one(settings: Settings) -> AsyncIterator[AsyncEngine]:
    """An engine whose pool holds a single connection, so reuse is visible."""
    engine = make_engine(settings, "raw-test", pool_size=1)
    yield engine
    await engine.dispose()


async def backend(engine: AsyncEngine) -> int:
    async with raw.connection(engine) as conn:
        pid: int = await conn.fetchval("SELECT pg_backend_pid()")
    return pid


async def test_a_statements_own_error_keeps_the_connection(one: AsyncEngine) -> None:
    pid = await backend(one)

    async def divide_by_zero() -> None:
        async with raw.connection(one) as conn:
            await conn.fetchval("SELECT 1 / 0")

    with pytest.raises(asyncpg.DivisionByZeroError):
        await divide_by_zero()
    assert await backend(one) == pid


async def test_the_callers_own_error_keeps_the_connection(one: AsyncEngine) -> None:
    pid = await backend(one)

    async def refused() -> None:
        async with raw.connection(one) as conn:
            await conn.fetchval("SELECT 1")
            raise LookupError("the request is refused, the session is fine")

    with pytest.raises(LookupError):
        await refused()
    assert await backend(one) == pid


async def test_a_terminated_backend_is_transient_and_the_next_checkout_is_fresh(
    one: AsyncEngine, engine: AsyncEngine
) -> None:
    pid = await backend(one)

    async def terminated_midway() -> None:
        async with raw.connection(one) as conn:
            async with raw.connection(engine) as admin:
                await admin.execute("SELECT pg_terminate_backend($1)", pid)
            await conn.fetchval("SELECT 1")

    with pytest.raises(DependencyUnavailable):
        await terminated_midway()
    assert await backend(one) != pid


async def test_a_statement_cancelled_midway_never_hands_its_connection_out_again(
    one: AsyncEngine,
) -> None:
    pid = await backend(one)

    async def slow() -> None:
        async with raw.connection(one) as conn:
            await conn.execute("SELECT pg_sleep(5)")

    task = asyncio.ensure_future(slow())
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await backend(one) != pid


async def test_a_statement_timeout_replaces_its_own_connection_and_keeps_the_others(
    settings: Settings,
) -> None:
    """A timeout says that one statement was slow (a lock, a slow link), not that the server
    went away: the pool's other connections, their statements prepared, stay."""
    two = make_engine(replace(settings, db_timeout_seconds=0.5), "raw-test", pool_size=2)
    try:
        before = await backends(two, 2)

        async def slow() -> None:
            async with raw.connection(two) as conn:
                await conn.execute("SELECT pg_sleep(3)")

        with pytest.raises(TimeoutError) as timed_out:
            await slow()
        assert is_transient(timed_out.value)
        assert len(before & await backends(two, 2)) == 1
    finally:
        await two.dispose()


async def backends(engine: AsyncEngine, n: int) -> set[int]:
    """The backends of ``n`` connections checked out at once."""
    async with contextlib.AsyncExitStack() as stack:
        conns = [await stack.enter_async_context(raw.connection(engine)) for _ in range(n)]
        return {await conn.fetchval("SELECT pg_backend_pid()") for conn in conns}
