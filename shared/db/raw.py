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

#: Errors that leave a connection unusable: the server went away or ended the session
#: (terminated backend, shutdown), or the protocol lost its place.
LOST = (
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
)


@asynccontextmanager
async def connection(engine: AsyncEngine) -> AsyncIterator[Any]:
    """An ``asyncpg.Connection`` from the engine's pool, in autocommit (asyncpg's default).

    A statement's own error (a constraint, ``JQ001``) leaves the connection in the pool. Any
    other failure, a cancellation included, may leave it mid-protocol, so it is never handed
    out again; a lost connection is raised as ``DependencyUnavailable`` (transient: the caller
    answers ``503``, or tries again).
    """
    async with engine.connect() as conn:
        proxied = await conn.get_raw_connection()
        driver: Any = proxied.driver_connection
        try:
            yield driver
        except BaseException as exc:
            lost = isinstance(exc, LOST) or driver.is_closed()
            if isinstance(exc, asyncpg.PostgresError) and not lost:
                raise
            # Replaced at its next checkout (no I/O here: this may be a cancelled task).
            proxied.invalidate(exc if isinstance(exc, Exception) else None, soft=True)
            if not lost:
                raise
            # As SQLAlchemy does on a disconnect: a restart or terminated backends take every
            # connection, so each one opened before now is replaced at its next checkout
            # (without this, retries met the dead ones one by one for seconds).
            engine.sync_engine.pool._invalidate(proxied, exc, _checkin=False)
            raise DependencyUnavailable(f"PostgreSQL connection lost: {exc!r}") from exc
