"""``/v1/admin/tenants/{tenant}/limits``: a tenant's limits, cluster-wide (scope ``admin``):
jobs running at once and jobs started per second (docs/design.md §2.2)."""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import delete, get, put
from litestar.di import NamedDependency
from litestar.exceptions import NotFoundException
from litestar.params import JSONBody, PathParameter

from services.api.auth import requires_scopes
from services.api.openapi import problems
from services.api.routes.admin import ADMIN
from services.api.schemas import TenantLimitsIn, TenantLimitsOut
from shared.credentials import TENANT_PATTERN
from shared.db.limits import LimitStore
from shared.db.models import TenantLimits

PATH = "/v1/admin/tenants/{tenant:str}/limits"
Tenant = Annotated[str, PathParameter(pattern=TENANT_PATTERN)]


def _out(limits: TenantLimits) -> TenantLimitsOut:
    return TenantLimitsOut(
        tenant=limits.tenant,
        max_running=limits.max_running,
        starts_per_second=limits.starts_per_second,
        burst=limits.burst,
        updated_at=limits.updated_at,
    )


@put(PATH, guards=[requires_scopes], opt=ADMIN, responses=problems(401, 403, 413, 415, 422, 503))
async def put_limits(
    tenant: Tenant, data: JSONBody[TenantLimitsIn], limit_store: NamedDependency[LimitStore]
) -> TenantLimitsOut:
    """Set the tenant's limits (a field left out or ``null``: no such limit). While a tenant
    has limits, its queued jobs wait in PostgreSQL for the dispatcher."""
    return _out(await limit_store.put(tenant, msgspec.structs.asdict(data)))


@get(PATH, guards=[requires_scopes], opt=ADMIN, responses=problems(401, 403, 404, 422, 503))
async def get_limits(tenant: Tenant, limit_store: NamedDependency[LimitStore]) -> TenantLimitsOut:
    limits = await limit_store.get(tenant)
    if limits is None:
        raise NotFoundException(detail=f"tenant {tenant!r} has no limits")
    return _out(limits)


@delete(PATH, guards=[requires_scopes], opt=ADMIN, responses=problems(401, 403, 404, 422, 503))
async def delete_limits(tenant: Tenant, limit_store: NamedDependency[LimitStore]) -> None:
    """Lift the tenant's limits; its held jobs go out with the dispatcher's next pass."""
    if not await limit_store.delete(tenant):
        raise NotFoundException(detail=f"tenant {tenant!r} has no limits")


ROUTES = [put_limits, get_limits, delete_limits]
