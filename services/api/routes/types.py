"""``/v1/types``: the job types workers serve (docs/design.md §5)."""

from __future__ import annotations

from litestar import get
from litestar.di import NamedDependency

from services.api.auth import requires_scopes
from services.api.openapi import problems
from services.api.schemas import TypeList, TypeOut
from services.api.types import TypeCatalog


@get(
    "/v1/types",
    guards=[requires_scopes],
    opt={"scopes": ["jobs:read"]},
    responses=problems(401, 403, 503),
)
async def list_types(catalog: NamedDependency[TypeCatalog]) -> TypeList:
    """Every job type a worker registered (name, payload JSON Schema, defaults, when last
    seen); ``served``: seen within ``JOBQ_TYPES_GRACE_SECONDS``."""
    return TypeList(
        items=[
            TypeOut(name=t.name, schema=t.schema, defaults=t.defaults, last_seen=t.last_seen,
                    served=t.served)
            for t in await catalog.all()
        ]
    )  # fmt: skip


ROUTES = [list_types]
