"""The job types workers serve (docs/design.md §5): registered by each worker as it starts and
every minute after; a type counts as served until ``grace`` seconds after it was last seen, so
a rolling deploy never makes it unknown."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from shared.db import raw


@dataclass(frozen=True, slots=True)
class JobType:
    name: str
    schema: dict[str, Any]
    defaults: dict[str, Any]
    last_seen: datetime
    #: Seen by the database within the grace period.
    served: bool


class TypeStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def register(self, types: Sequence[tuple[str, dict[str, Any], dict[str, Any]]]) -> None:
        """``(name, payload schema, defaults)`` of the types a worker serves, seen now."""
        if not types:
            return
        async with raw.connection(self.engine) as conn:
            await conn.execute(
                """
                INSERT INTO job_types (name, schema, defaults, last_seen)
                SELECT n, s::jsonb, d::jsonb, now()
                FROM unnest($1::text[], $2::text[], $3::text[]) AS v(n, s, d)
                ON CONFLICT (name) DO UPDATE SET schema = excluded.schema,
                    defaults = excluded.defaults, last_seen = now()
                """,
                [t[0] for t in types], [json.dumps(t[1]) for t in types],
                [json.dumps(t[2]) for t in types],
            )  # fmt: skip

    async def all(self, grace_seconds: float) -> list[JobType]:
        async with raw.connection(self.engine) as conn:
            rows = await conn.fetch(
                """
                SELECT name, schema::text, defaults::text, last_seen,
                    last_seen > now() - make_interval(secs => $1) AS served
                FROM job_types ORDER BY name
                """,
                grace_seconds,
            )
        return [JobType(r[0], json.loads(r[1]), json.loads(r[2]), r[3], r[4]) for r in rows]
