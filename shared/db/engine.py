"""The async engine: SQLAlchemy on asyncpg, with a timeout on every statement."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

if TYPE_CHECKING:
    from shared.config import Settings


def make_engine(
    settings: Settings, application_name: str, pool_size: int | None = None
) -> AsyncEngine:
    """An engine whose connections name the service (``pg_stat_activity``) and time out.

    ``pool_pre_ping`` replaces connections PostgreSQL dropped (restart, ``pg_terminate_backend``)
    before a request trips on them.
    """
    size = pool_size or settings.db_pool_size
    return create_async_engine(
        settings.database_url,
        pool_size=size,
        max_overflow=size,
        pool_pre_ping=True,
        pool_timeout=settings.db_timeout_seconds,
        connect_args={
            "command_timeout": settings.db_timeout_seconds,
            "timeout": settings.db_timeout_seconds,
            "server_settings": {"application_name": f"jobq-{application_name}"},
        },
    )
