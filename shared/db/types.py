"""The job types workers serve (docs/design.md §5.8): registered by each worker as it starts
and every minute after; a type counts as served until ``grace`` seconds after it was last seen,
so a rolling deploy never makes it unknown.

jobq's own workers serve every tenant: their types are cluster-wide (tenant ``''``). An HTTP
worker serves its own tenant only, so the types it registers are that tenant's, and for that
tenant they stand before the cluster-wide type of the same name.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from shared.db import raw

#: The tenant of the types jobq's own workers register: every tenant's.
CLUSTER = ""

#: ``(name, payload JSON Schema, defaults)`` of one type.
Described = tuple[str, dict[str, Any], dict[str, Any]]


@dataclass(frozen=True, slots=True)
class JobType:
    name: str
    schema: dict[str, Any]
    defaults: dict[str, Any]
    last_seen: datetime
    #: Seen by the database within the grace period.
    served: bool
    #: Whose it is: ``CLUSTER`` (jobq's workers), or the tenant whose HTTP workers serve it.
    tenant: str = CLUSTER


class TypeStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def register(self, types: Sequence[Described], tenant: str = CLUSTER) -> list[JobType]:
        """The types a worker serves, seen now: cluster-wide, or ``tenant``'s own. Returns
        them as written."""
        if not types:
            return []
        async with raw.connection(self.engine) as conn:
            rows = await conn.fetch(
                f"""
                INSERT INTO job_types (tenant, name, schema, defaults, last_seen)
                SELECT $1, n, s::jsonb, d::jsonb, now()
                FROM unnest($2::text[], $3::text[], $4::text[]) AS v(n, s, d)
                ON CONFLICT (tenant, name) DO UPDATE SET schema = excluded.schema,
                    defaults = excluded.defaults, last_seen = now()
                RETURNING {COLUMNS.format(grace="1")}
                """,
                tenant, [t[0] for t in types], [json.dumps(t[1]) for t in types],
                [json.dumps(t[2]) for t in types],
            )  # fmt: skip
        return [_type(r) for r in rows]

    async def all(self, grace_seconds: float) -> list[JobType]:
        """Every registered type, of every tenant."""
        async with raw.connection(self.engine) as conn:
            rows = await conn.fetch(
                f"""
                SELECT {COLUMNS.format(grace="$1")} FROM job_types ORDER BY name, tenant
                """,
                grace_seconds,
            )
        return [_type(r) for r in rows]


#: ``JobType``'s fields; ``served`` is reckoned with a grace period of ``{grace}`` seconds
#: (a fresh registration is served whatever the grace).
COLUMNS = """name, schema::text, defaults::text, last_seen,
    last_seen > now() - make_interval(secs => {grace}) AS served, tenant"""


def _type(r: Any) -> JobType:
    return JobType(r[0], json.loads(r[1]), json.loads(r[2]), r[3], r[4], r[5])
