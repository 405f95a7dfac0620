"""Tenants' limits (``tenant_limits``, docs/design.md §2.2): what an admin sets; the
dispatcher (``shared.db.dispatch``) enforces them and keeps their token buckets."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import col, select

from shared.db.models import TenantLimits


class LimitStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def get(self, tenant: str) -> TenantLimits | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(select(TenantLimits).where(col(TenantLimits.tenant) == tenant))
            ).first()
        return None if row is None else TenantLimits.model_validate(dict(row._mapping))

    async def put(self, tenant: str, limits: dict[str, Any]) -> TenantLimits:
        """Set the tenant's limits (all of them: one left out is none). A changed rate starts
        with a full bucket."""
        values = {"max_running": None, "starts_per_second": None, "burst": None, **limits}
        stmt = (
            insert(TenantLimits)
            .values(tenant=tenant, tokens=_full(values), **values)
            .on_conflict_do_update(
                index_elements=["tenant"],
                set_={
                    **values,
                    "tokens": _full(values),
                    "refilled_at": sa.func.now(),
                    "updated_at": sa.func.now(),
                },
            )
            .returning(*TenantLimits.metadata.tables["tenant_limits"].columns)
        )
        async with self.engine.begin() as conn:
            row = (await conn.execute(stmt)).one()
        return TenantLimits.model_validate(dict(row._mapping))

    async def delete(self, tenant: str) -> bool:
        """Lift the tenant's limits: its jobs held for them are released by the next pass."""
        async with self.engine.begin() as conn:
            done = await conn.execute(
                sa.delete(TenantLimits).where(col(TenantLimits.tenant) == tenant)
            )
        return bool(done.rowcount)


def _full(values: dict[str, Any]) -> float:
    rate = values.get("starts_per_second")
    return float(values.get("burst") or max(1, rate or 0))
