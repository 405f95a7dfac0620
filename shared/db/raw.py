"""asyncpg itself, for the statements on the hot path (docs/design.md §7).

SQLAlchemy builds, caches and adapts a statement in about 200 µs of CPU, more than PostgreSQL
takes to run a small one. The hot statements therefore run on the driver connection under the
engine's pool: one pool per process, asyncpg's own prepared-statement cache, and the engine
still owns the connections (a connection that failed is invalidated, so the pool replaces it).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import asyncpg

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

from shared.errors import DependencyUnavailable


@asynccontextmanager
async def connection(engine: AsyncEngine) -> AsyncIterator[Any]:
    """An ``asyncpg.Connection`` from the engine's pool, in autocommit (asyncpg's default).

    A connection that breaks under use is dropped from the pool, and the error raised as
    ``DependencyUnavailable`` (transient: the caller answers ``503``, or tries again).
    """
    async with engine.connect() as conn:
        proxied = await conn.get_raw_connection()
        driver: Any = proxied.driver_connection
        try:
            yield driver
        except (asyncpg.InterfaceError, asyncpg.PostgresConnectionError, OSError) as exc:
            if not driver.is_closed() and not isinstance(exc, asyncpg.PostgresConnectionError):
                raise
            await conn.invalidate()
            raise DependencyUnavailable(f"PostgreSQL connection lost: {exc!r}") from exc
