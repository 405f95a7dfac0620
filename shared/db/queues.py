"""Declared queues: the only queues jobs may name, with the settings that fill what a submit
leaves out.

A submit locks the rows of the queues it names ``FOR KEY SHARE`` within its INSERT
(``JobStore.insert``); ``delete`` locks its row ``FOR UPDATE`` first, so it waits for the
submits in flight, then sees their jobs, and refuses while any job of the queue is unfinished.
No job can be accepted into a queue that is being deleted.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import col, select

from shared.db.models import Queue
from shared.domain import TERMINAL, JobStatus
from shared.errors import QueueInUse

UNFINISHED = sorted(set(JobStatus) - TERMINAL)
#: A refused delete counts the queue's unfinished jobs up to this many (while it holds a lock).
MOST_COUNTED = 1000


class QueueStore:
    """The ``queues`` table (operators' writes, everyone's reads)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def declare(self, names: Sequence[str]) -> None:
        """Declare queues with default settings; those already declared keep theirs."""
        async with self.engine.begin() as conn:
            await conn.execute(
                sa.text(
                    "INSERT INTO queues (name) SELECT unnest(CAST(:names AS text[]))"
                    " ON CONFLICT DO NOTHING"
                ),
                {"names": list(names)},
            )

    async def create(self, queue: Queue) -> Queue | None:
        """Declare ``queue`` with its settings; ``None`` if one of that name exists."""
        stmt = (
            insert(Queue)
            .values(**queue.model_dump(exclude_none=True))
            .on_conflict_do_nothing()
            .returning(*_columns())
        )
        return await self._one(stmt)

    async def get(self, name: str) -> Queue | None:
        return await self._one(select(Queue).where(col(Queue.name) == name), write=False)

    async def all(self) -> list[Queue]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(Queue).order_by(col(Queue.name)))
            return [Queue.model_validate(dict(r._mapping)) for r in rows]

    async def missing(self, names: Sequence[str]) -> list[str]:
        """Which of ``names`` are not declared."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(col(Queue.name)).where(col(Queue.name).in_(names)))
            found = set(rows.scalars())
        return [name for name in names if name not in found]

    async def update(self, name: str, changes: dict[str, Any]) -> Queue | None:
        """Change a queue's settings (jobs already accepted keep theirs); ``None`` if unknown."""
        stmt = (
            sa.update(Queue)
            .where(col(Queue.name) == name)
            .values(**changes, updated_at=sa.func.now())
            .returning(*_columns())
        )
        return await self._one(stmt)

    async def delete(self, name: str, unbind: Callable[[], Awaitable[None]]) -> bool:
        """Delete a queue no unfinished job names; ``False`` if it is not declared.

        ``unbind`` (deleting the broker's queue) runs before the commit: if it fails (the
        broker queue has consumers, say), the queue stays declared. Raises ``QueueInUse``.
        """
        async with self.engine.begin() as conn:
            locked = await conn.execute(
                sa.text("SELECT name FROM queues WHERE name = :name FOR UPDATE"), {"name": name}
            )
            if locked.first() is None:
                return False
            unfinished = await conn.scalar(
                sa.text(
                    "SELECT count(*) FROM (SELECT 1 FROM jobs WHERE queue = :name"
                    " AND status = ANY(CAST(:unfinished AS text[])) LIMIT :most) AS j"
                ),
                {"name": name, "unfinished": UNFINISHED, "most": MOST_COUNTED},
            )
            if unfinished:
                many = f"{unfinished}{'+' if unfinished == MOST_COUNTED else ''}"
                raise QueueInUse(
                    f"queue {name!r} has {many} unfinished jobs; cancel them or let them"
                    " finish first"
                )
            await conn.execute(sa.delete(Queue).where(col(Queue.name) == name))
            await unbind()
        return True

    async def _one(self, stmt: Any, write: bool = True) -> Queue | None:
        async with self.engine.begin() if write else self.engine.connect() as conn:
            row = (await conn.execute(stmt)).first()
        return None if row is None else Queue.model_validate(dict(row._mapping))


def _columns() -> list[Any]:
    return list(Queue.metadata.tables["queues"].columns)
