"""Why PostgreSQL will not let jobq start, as one line that says what to do.

A stock PostgreSQL asks for a password over TCP, a fresh server has no ``jobq`` database, and
a user may lack the right to create one; each is a refusal with its own SQLSTATE, and each has
its own fix. Anything else that stops the connection is "unreachable".
"""

from __future__ import annotations

from urllib.parse import urlsplit

from shared.db.errors import is_transient

#: invalid_password, invalid_authorization_specification (no pg_hba.conf entry).
LOGIN_REFUSED = frozenset({"28P01", "28000"})
NO_DATABASE = "3D000"  # invalid_catalog_name
NO_PRIVILEGE = "42501"  # insufficient_privilege


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and what it wraps: SQLAlchemy's ``orig``, causes and contexts."""
    found: list[BaseException] = []
    stack: list[BaseException | None] = [exc]
    while stack:
        e = stack.pop(0)
        if e is None or any(e is f for f in found):
            continue
        found.append(e)
        stack += [getattr(e, "orig", None), e.__cause__, e.__context__]
    return found


def _with_sqlstate(exc: BaseException) -> BaseException | None:
    return next((e for e in _chain(exc) if isinstance(getattr(e, "sqlstate", None), str)), None)


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of a database error, under SQLAlchemy's wrapping or not."""
    found = _with_sqlstate(exc)
    return getattr(found, "sqlstate", None) if found is not None else None


def redact(url: str) -> str:
    """A URL without its password, for messages."""
    head, sep, tail = url.rpartition("@")
    if not sep:
        return url
    scheme, _, creds = head.partition("://")
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}@{tail}"


def database_problem(exc: BaseException, url: str) -> str | None:
    """The line to print for ``exc``, raised connecting to ``url``; ``None``: not a refusal
    to connect (a bug, or a statement's own error), let it surface."""
    parts = urlsplit(url)
    user, host = parts.username or "(none)", parts.hostname or "localhost"
    database = parts.path.lstrip("/") or "jobq"
    refusal = _with_sqlstate(exc)
    state = getattr(refusal, "sqlstate", None)
    if refusal is not None and state in LOGIN_REFUSED:
        return (
            f"PostgreSQL at {redact(url)} refused user {user!r} ({_first_line(refusal)}): set"
            " JOBQ_DATABASE_URL to a user and password it accepts, e.g."
            f" postgresql+asyncpg://jobq:PASSWORD@{host}:{parts.port or 5432}/{database}"
            " (sudo -u postgres createuser --createdb --pwprompt jobq)"
        )
    if state == NO_DATABASE:
        return (
            f"PostgreSQL at {redact(url)} has no database {database!r}: run `jobq init` (or"
            " `jobq migrate`), which creates it"
        )
    if state == NO_PRIVILEGE:
        return (
            f"PostgreSQL user {user!r} may not create database {database!r}: create it"
            f" (sudo -u postgres createdb -O {user} {database}) or use a user with CREATEDB"
        )
    cut = next((e for e in _chain(exc) if isinstance(e, OSError | TimeoutError)), None)
    if cut is not None or is_transient(exc):
        return (
            f"PostgreSQL at {redact(url)} is unreachable ({_first_line(cut or exc)}); start it"
            " (pg_ctlcluster <version> main start) or set JOBQ_DATABASE_URL"
        )
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]
