"""Which database errors mean "PostgreSQL is unreachable right now, try again"."""

from __future__ import annotations

import asyncpg
from sqlalchemy import exc as sa_exc

from shared.errors import DependencyUnavailable

#: SQLSTATEs a retry may cure: lost connections (08), server shutdown or restart (57P01..03),
#: a read-only server during failover (25006), too many connections (53300), and a deadlock
#: or serialization failure (40P01, 40001), whose transaction was rolled back whole.
TRANSIENT_SQLSTATES = ("08", "57P", "25006", "53300", "40P01", "40001")
#: Raised by ``jobq_undeclared_queue`` (migration 0002) for a job naming an undeclared queue.
UNDECLARED_QUEUE = "JQ001"


def sqlstate(error: sa_exc.DBAPIError) -> str | None:
    """The SQLSTATE of a database error, whichever driver raised it."""
    state = getattr(error.orig, "sqlstate", None) or getattr(error.orig, "pgcode", None)
    return state if isinstance(state, str) else None


def is_transient(error: BaseException) -> bool:
    """True for errors a retry may cure: connection loss, restart, timeouts, pool exhaustion."""
    if isinstance(error, (OSError, TimeoutError, sa_exc.TimeoutError, DependencyUnavailable)):
        return True
    if isinstance(error, asyncpg.PostgresError):  # raised by a statement run on asyncpg itself
        return error.sqlstate is not None and error.sqlstate.startswith(TRANSIENT_SQLSTATES)
    if isinstance(error, sa_exc.DBAPIError):
        if error.connection_invalidated or isinstance(
            error, (sa_exc.OperationalError, sa_exc.InterfaceError)
        ):
            return True
        state = sqlstate(error)
        return state is not None and state.startswith(TRANSIENT_SQLSTATES)
    return False
