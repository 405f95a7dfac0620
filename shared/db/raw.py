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

#: Errors of a session that is gone: the server went away, ended it (terminated backend,
#: shutdown, crash) or refused it.
LOST = (
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.DatabaseDroppedError,
    asyncpg.exceptions.IdleSessionTimeoutError,
    OSError,
)
#: Failures after which the protocol may be mid-statement: the connection is not reused.
UNSETTLED = (TimeoutError, asyncpg.InterfaceError, asyncpg.InternalClientError)


@asynccontextmanager
async def connection(engine: AsyncEngine) -> AsyncIterator[Any]:
    """An ``asyncpg.Connection`` from the engine's pool, in autocommit (asyncpg's default).

    An error of the statement or of the caller (a constraint, ``JQ001``, a refused request)
    leaves the connection in the pool. A cancellation, a timeout or a protocol error may leave
    it mid-statement, so it is not handed out again; a lost session is raised as
    ``DependencyUnavailable`` (transient: the caller answers ``503``, or tries again).
    """
    async with engine.connect() as conn:
        proxied = await conn.get_raw_connection()
        driver: Any = proxied.driver_connection
        try:
            yield driver
        except BaseException as exc:
            # TimeoutError is an OSError, but it says only that this statement was slow (a
            # lock, a slow link): the other connections of the pool stay.
            lost = driver.is_closed() or (
                isinstance(exc, LOST) and not isinstance(exc, TimeoutError)
            )
            if not lost and isinstance(exc, Exception) and not isinstance(exc, UNSETTLED):
                raise
            # Replaced at its next checkout (no I/O here: this may be a cancelled task).
            proxied.invalidate(exc if isinstance(exc, Exception) else None, soft=True)
            if not lost:
                raise
            # As SQLAlchemy does on a disconnect: a restart or terminated backends take every
            # connection, so each one opened before now is replaced at its next checkout
            # (without this, retries met the dead ones one by one for seconds). SQLAlchemy's
            # own (private) call: tests/integration/test_raw.py fails if it changes.
            engine.sync_engine.pool._invalidate(proxied, exc, _checkin=False)
            raise DependencyUnavailable(f"PostgreSQL connection lost: {exc!r}") from exc
