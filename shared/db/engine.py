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

    No ``pool_pre_ping``: it would cost a round trip per transaction on the hot path. A
    connection PostgreSQL dropped fails its next statement instead, SQLAlchemy then discards
    the whole pool, and callers treat the error as transient (``shared.db.errors``).
    ``hide_parameters``: an error's text is logged, and parameters hold payloads and hashes.
    """
    size = pool_size or settings.db_pool_size
    return create_async_engine(
        settings.database_url,
        pool_size=size,
        max_overflow=size,
        pool_timeout=settings.db_timeout_seconds,
        hide_parameters=True,
        connect_args={
            "command_timeout": settings.db_timeout_seconds,
            "timeout": settings.db_timeout_seconds,
            "server_settings": {"application_name": f"jobq-{application_name}"},
        },
    )
