"""PostgreSQL URLs and fresh databases for the bench."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import asyncpg


def database_of(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


def respell(url: str, *, database: str | None = None, scheme: str | None = None) -> str:
    """``url`` naming another database and/or spelling its scheme for another driver."""
    parts = urlsplit(url)
    if database is not None:
        parts = parts._replace(path=f"/{database}")
    if scheme is not None:
        parts = parts._replace(scheme=scheme)
    return urlunsplit(parts)


def libpq(url: str) -> str:
    """``postgresql+asyncpg://…`` as asyncpg spells it."""
    return respell(url, scheme="postgresql")


async def fresh_database(url: str) -> None:
    """Drop the database ``url`` names (whoever is connected) and create it empty."""
    database = database_of(url)
    admin = await asyncpg.connect(libpq(respell(url, database="postgres")))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{database}"')
    finally:
        await admin.close()
