"""Which database errors mean "PostgreSQL is unreachable right now, try again"."""

from __future__ import annotations

from sqlalchemy import exc as sa_exc

#: SQLSTATEs a retry may cure: lost connections (08), server shutdown or restart (57P01..03),
#: a read-only server during failover (25006), too many connections (53300), and a deadlock
#: or serialization failure (40P01, 40001), whose transaction was rolled back whole.
TRANSIENT_SQLSTATES = ("08", "57P", "25006", "53300", "40P01", "40001")


def is_transient(error: BaseException) -> bool:
    """True for errors a retry may cure: connection loss, restart, timeouts, pool exhaustion."""
    if isinstance(error, (OSError, TimeoutError, sa_exc.TimeoutError)):
        return True
    if isinstance(error, sa_exc.DBAPIError):
        if error.connection_invalidated or isinstance(
            error, (sa_exc.OperationalError, sa_exc.InterfaceError)
        ):
            return True
        state = getattr(error.orig, "sqlstate", None) or getattr(error.orig, "pgcode", None)
        return isinstance(state, str) and state.startswith(TRANSIENT_SQLSTATES)
    return False
