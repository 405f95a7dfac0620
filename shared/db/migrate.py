"""Create the database if missing and apply Alembic migrations, from code (no alembic.ini)."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

from shared.db.engine import make_engine

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from shared.config import Settings


def alembic_config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", "shared.db:migrations")
    cfg.attributes["connection"] = connection
    return cfg


def behind(revision: str | None) -> bool:
    """Whether a database at ``revision`` (``None``: never migrated) lacks migrations this
    code needs. A revision this code does not know is newer code's: not behind."""
    script = ScriptDirectory.from_config(alembic_config())
    if revision is None:
        return True
    known = {r.revision for r in script.walk_revisions()}
    return revision in known and revision != script.get_current_head()


async def ensure_database(settings: Settings) -> bool:
    """Create the configured database unless it exists; True if it was created."""
    parts = urlsplit(settings.sync_database_url)
    name = parts.path.lstrip("/")
    admin_url = urlunsplit(parts._replace(path="/postgres"))
    conn = await asyncpg.connect(admin_url, timeout=settings.db_timeout_seconds)
    try:
        if await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            return False
        await conn.execute(f'CREATE DATABASE "{name.replace(chr(34), "")}"')
        return True
    finally:
        await conn.close()


async def upgrade(settings: Settings, revision: str = "head") -> None:
    """Apply migrations up to ``revision`` in one transaction (Alembic's), apart from the
    steps that must run outside one (an index built ``CONCURRENTLY``)."""
    engine = make_engine(settings, "migrate", pool_size=1)
    try:
        async with engine.connect() as conn:
            await conn.run_sync(lambda sync: command.upgrade(alembic_config(sync), revision))
            await conn.commit()
    finally:
        await engine.dispose()
