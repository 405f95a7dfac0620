"""Each way PostgreSQL refuses jobq at start-up gets its own line and fix."""

from __future__ import annotations

import asyncpg
import pytest

from shared.db.diagnose import database_problem, sqlstate

URL = "postgresql://app:s3cret@db.example:5433/jobs"


def wrapped(exc: BaseException) -> Exception:
    """As SQLAlchemy hands it over: the driver's error as ``orig``, the asyncpg one as cause."""
    outer = Exception("(sqlalchemy.dialects.postgresql.asyncpg.Error) ...")
    outer.orig = RuntimeError("adapted")  # type: ignore[attr-defined]
    outer.orig.__cause__ = exc  # type: ignore[attr-defined]
    return outer


@pytest.mark.parametrize(
    ("exc", "says"),
    [
        (asyncpg.InvalidPasswordError("password authentication failed for user \"app\""),
         "refused user 'app' (password authentication failed"),
        (asyncpg.InvalidAuthorizationSpecificationError('no pg_hba.conf entry for host "1.2.3.4"'),
         "set JOBQ_DATABASE_URL to a user and password it accepts"),
        (asyncpg.InvalidCatalogNameError('database "jobs" does not exist'),
         "has no database 'jobs': run `jobq init`"),
        (asyncpg.InsufficientPrivilegeError("permission denied to create database"),
         "sudo -u postgres createdb -O app jobs"),
        (ConnectionRefusedError(111, "Connection refused"), "is unreachable"),
    ],
)  # fmt: skip
def test_refusals_name_their_fix_and_never_the_password(exc: BaseException, says: str) -> None:
    for raised in (exc, wrapped(exc)):
        line = database_problem(raised, URL)
        assert line is not None
        assert says in line
        assert "s3cret" not in line
        assert "\n" not in line


def test_other_errors_are_not_dressed_up_as_connection_problems() -> None:
    assert database_problem(asyncpg.UndefinedTableError("no such table"), URL) is None
    assert database_problem(ValueError("a bug"), URL) is None
    assert sqlstate(wrapped(asyncpg.InvalidCatalogNameError("x"))) == "3D000"
