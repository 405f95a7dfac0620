"""API clients: created with a hashed secret, looked up at token time and on every request."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeAlias

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import col, select

from shared.credentials import hash_secret, new_callback_secret, new_secret
from shared.db import raw
from shared.db.models import ApiClient


@dataclass(frozen=True, slots=True)
class ClientGrant:
    """An active client's row as the per-request check needs it."""

    secret_hash: str
    tenant: str
    scopes: frozenset[str]


def _active_client(client_id: uuid.UUID) -> tuple[Any, ...]:
    return (
        col(ApiClient.id) == client_id,
        col(ApiClient.revoked_at).is_(None),
        sa.or_(col(ApiClient.expires_at).is_(None), col(ApiClient.expires_at) > sa.func.now()),
    )


#: What the token endpoint reads of a client: id, tenant, scopes, secret_hash, expires_at and
#: revoked_at.
ClientCredentials: TypeAlias = sa.Row[
    uuid.UUID, str, list[str], str, datetime | None, datetime | None
]


class ClientStore:
    """API clients: created with a hashed secret, looked up at token time, revoked."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        # Lookups on every request run in autocommit: one round trip, no BEGIN and ROLLBACK.
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")

    async def create(self, client: ApiClient) -> ApiClient:
        async with self.engine.begin() as conn:
            await conn.execute(sa.insert(ApiClient).values(**client.model_dump(exclude_none=True)))
        return client

    async def register(
        self,
        name: str,
        tenant: str,
        scopes: Sequence[str],
        expires_at: datetime | None = None,
    ) -> tuple[ApiClient, str]:
        """A new client with a fresh secret: the row (holding only the secret's hash) and the
        secret, to be shown once."""
        secret = new_secret()
        client = ApiClient(
            id=uuid.uuid4(),
            name=name,
            tenant=tenant,
            scopes=sorted(set(scopes)),
            secret_hash=hash_secret(secret),
            callback_secret=new_callback_secret(),
            expires_at=expires_at,
        )
        return await self.create(client), secret

    async def get(self, client_id: uuid.UUID) -> ApiClient | None:
        async with self.engine.connect() as conn:
            q = select(ApiClient).where(col(ApiClient.id) == client_id)
            row = (await conn.execute(q)).first()
        return None if row is None else ApiClient.model_validate(dict(row._mapping))

    async def credentials(self, client_id: uuid.UUID) -> ClientCredentials | None:
        """What the token endpoint checks, as a plain row: building an ``ApiClient`` would
        cost time only when the id exists, telling a guesser which ids do."""
        q = sa.select(
            col(ApiClient.id),
            col(ApiClient.tenant),
            col(ApiClient.scopes),
            col(ApiClient.secret_hash),
            col(ApiClient.expires_at),
            col(ApiClient.revoked_at),
        ).where(col(ApiClient.id) == client_id)
        async with self._autocommit.connect() as conn:
            return (await conn.execute(q)).first()

    async def list(self) -> list[ApiClient]:
        async with self.engine.connect() as conn:
            q = select(ApiClient).order_by(col(ApiClient.created_at))
            return [ApiClient.model_validate(dict(r._mapping)) for r in await conn.execute(q)]

    async def revoke(self, client_id: uuid.UUID) -> bool:
        async with self.engine.begin() as conn:
            result = await conn.execute(
                sa.update(ApiClient)
                .where(col(ApiClient.id) == client_id, col(ApiClient.revoked_at).is_(None))
                .values(revoked_at=sa.func.now())
            )
            return bool(result.rowcount)

    async def grants(self, client_ids: Sequence[uuid.UUID]) -> Sequence[ClientGrant | None]:
        """What each active (not revoked, not expired) client may do, with its secret's hash;
        ``None`` for an unknown, revoked or expired one.

        Checked on every authenticated request (the API gathers the requests of one moment
        into one lookup), so revocation and rotation take effect at once on every API
        replica, and a token can claim no tenant or scope beyond its client's row.
        """
        async with raw.connection(self.engine) as conn:
            rows = await conn.fetch(
                """
                SELECT id, secret_hash, tenant, scopes FROM api_clients
                WHERE id = ANY($1::uuid[]) AND revoked_at IS NULL
                  AND (expires_at IS NULL OR expires_at > now())
                """,
                list(set(client_ids)),
            )
        found = {row[0]: ClientGrant(row[1], row[2], frozenset(row[3])) for row in rows}
        return [found.get(i) for i in client_ids]

    async def rotate(self, client_id: uuid.UUID) -> tuple[ApiClient, str] | None:
        """Give an active client a fresh secret: the row and the secret, to be shown once;
        ``None`` if the client is unknown, revoked or expired."""
        secret = new_secret()
        q = (
            sa.update(ApiClient)
            .where(*_active_client(client_id))
            .values(secret_hash=hash_secret(secret))
            .returning(*ApiClient.__table__.columns)  # type: ignore[attr-defined]
        )
        async with self.engine.begin() as conn:
            row = (await conn.execute(q)).first()
        return None if row is None else (ApiClient.model_validate(dict(row._mapping)), secret)

    async def rotate_callback_secret(
        self, client_id: uuid.UUID, grace_seconds: float
    ) -> tuple[str, datetime | None] | None:
        """A fresh callback secret for a client (revoked ones too: their jobs still deliver);
        the current one keeps signing beside it for ``grace_seconds`` (0: it stops now), so
        a receiver can switch at leisure. Returns the secret and when the previous one stops;
        ``None`` if the client is unknown."""
        secret = new_callback_secret()
        async with raw.connection(self.engine) as conn:
            row = await conn.fetchrow(
                """
                UPDATE api_clients SET callback_secret = $2,
                    callback_secret_previous = CASE WHEN $3 > 0 THEN callback_secret END,
                    callback_previous_until = CASE WHEN $3 > 0
                        THEN now() + make_interval(secs => $3::float8) END
                WHERE id = $1 RETURNING callback_previous_until
                """,
                client_id, secret, grace_seconds,
            )  # fmt: skip
        return None if row is None else (secret, row[0])

    async def any_admin(self) -> bool:
        async with self.engine.connect() as conn:
            q = (
                select(ApiClient.id)
                .where(
                    col(ApiClient.scopes).contains(["admin"]), col(ApiClient.revoked_at).is_(None)
                )
                .limit(1)
            )
            return (await conn.execute(q)).first() is not None
