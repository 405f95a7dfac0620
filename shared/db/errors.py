"""Which database errors mean "PostgreSQL is unreachable right now, try again"."""

from __future__ import annotations

from sqlalchemy import exc as sa_exc

#: SQLSTATE classes of lost connections and server shutdown/restart (57P01..57P03),
#: and a read-only server during failover (25006).
TRANSIENT_SQLSTATES = ("08", "57P", "25006", "53300")


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
