"""``/v1/types``: the job types workers serve (docs/design.md §5.8). jobq's own workers
register theirs in PostgreSQL; HTTP workers register theirs here, for their tenant alone."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody

from services.api.auth import requires_scopes
from services.api.openapi import problems
from services.api.schemas import TypeList, TypeOut, TypesIn
from services.api.tokens import Principal
from services.api.types import TypeCatalog, compile_schema, invalid
from shared.db.types import CLUSTER, JobType

AuthRequest = Request[Principal, str, Any]

#: The largest payload schema a type may register (its JSON text).
MAX_SCHEMA_BYTES = 64 * 1024


def _out(t: JobType) -> TypeOut:
    return TypeOut(
        name=t.name, schema=t.schema, defaults=t.defaults, last_seen=t.last_seen,
        served=t.served, tenant=None if t.tenant == CLUSTER else t.tenant,
    )  # fmt: skip


@get(
    "/v1/types",
    guards=[requires_scopes],
    opt={"scopes": ["jobs:read"]},
    responses=problems(401, 403, 503),
)
async def list_types(request: AuthRequest, catalog: NamedDependency[TypeCatalog]) -> TypeList:
    """The job types the caller's tenant may submit (name, payload JSON Schema, defaults, when
    last seen): jobq's workers' and its own HTTP workers' (which stand before a cluster-wide
    type of the same name); ``served``: seen within ``JOBQ_TYPES_GRACE_SECONDS``."""
    return TypeList(items=[_out(t) for t in await catalog.seen_by(request.user.tenant)])


@post(
    "/v1/types",
    guards=[requires_scopes],
    opt={"scopes": ["jobs:work"]},
    status_code=200,
    responses=problems(401, 403, 413, 415, 422, 503),
)
async def register_types(
    request: AuthRequest,
    data: JSONBody[TypesIn],
    catalog: NamedDependency[TypeCatalog],
) -> TypeList:
    """HTTP workers: the job types this worker serves, seen now (send them at start and every
    minute, like jobq's workers). They are the caller's tenant's alone."""
    described = []
    for i, t in enumerate(data.types):
        where = f"types[{i}].schema"
        if len(msgspec.json.encode(t.schema)) > MAX_SCHEMA_BYTES:
            raise invalid(where, f"{where} is over {MAX_SCHEMA_BYTES} bytes")
        try:
            compile_schema(t.schema)
        except ValueError as exc:
            raise invalid(where, f"{where} is not a JSON Schema: {exc}") from None
        defaults = {k: v for k, v in msgspec.structs.asdict(t.defaults).items() if v is not None}
        described.append((t.name, t.schema, defaults))
    if len({name for name, _, _ in described}) != len(described):
        raise invalid("types", "a type is named twice")
    return TypeList(items=[_out(t) for t in await catalog.register(request.user.tenant, described)])


ROUTES = [list_types, register_types]
