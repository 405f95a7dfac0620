"""``/v1/admin/clients``: create, list, show, revoke and rotate API clients (scope ``admin``).

A secret is shown once, in the answer that created it; only its hash is stored. Revoking or
rotating takes effect on the next request of any token the client holds.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated

import msgspec
from litestar import Response, delete, get, post
from litestar.di import NamedDependency
from litestar.exceptions import NotFoundException, ValidationException
from litestar.params import FromPath, JSONBody, QueryParameter

from services.api.auth import requires_scopes
from services.api.openapi import problems
from services.api.schemas import CallbackSecret, ClientIn, ClientList, ClientOut, ClientSecret
from shared.config import Settings
from shared.db.clients import ClientStore
from shared.db.models import ApiClient

ADMIN = {"scopes": ["admin"]}
#: The longest a rotated callback secret may keep signing.
MAX_GRACE_SECONDS = 30 * 86400
PATH = "/v1/admin/clients/{client_id:uuid}"


def _shown_once(client: ApiClient, secret: str, created: bool = False) -> ClientSecret:
    return ClientSecret(
        client_id=client.id,
        client_secret=secret,
        name=client.name,
        tenant=client.tenant,
        scopes=list(client.scopes),
        expires_at=client.expires_at,
        callback_secret=client.callback_secret if created else msgspec.UNSET,
    )


@post(
    "/v1/admin/clients",
    guards=[requires_scopes],
    opt=ADMIN,
    status_code=201,
    responses=problems(401, 403, 413, 415, 422, 503),
)
async def create_client(
    data: JSONBody[ClientIn], clients: NamedDependency[ClientStore]
) -> Response[ClientSecret]:
    """Create a client for any tenant; the answer holds its secret and its callback secret,
    shown this once."""
    if data.expires_at is not None and data.expires_at <= datetime.now(UTC):
        raise ValidationException(detail="expires_at must be in the future")
    client, secret = await clients.register(data.name, data.tenant, data.scopes, data.expires_at)
    return Response(
        _shown_once(client, secret, created=True),
        status_code=201,
        headers={"Location": f"/v1/admin/clients/{client.id}"},
    )


@get("/v1/admin/clients", guards=[requires_scopes], opt=ADMIN, responses=problems(401, 403, 503))
async def list_clients(clients: NamedDependency[ClientStore]) -> ClientList:
    """Every client, revoked ones included; never a secret or its hash."""
    return ClientList(items=[ClientOut.of(c) for c in await clients.list()])


@get(PATH, guards=[requires_scopes], opt=ADMIN, responses=problems(401, 403, 404, 503))
async def get_client(
    client_id: FromPath[uuid.UUID], clients: NamedDependency[ClientStore]
) -> ClientOut:
    """One client; never its secret or the secret's hash."""
    client = await clients.get(client_id)
    if client is None:
        raise NotFoundException(detail=f"no client {client_id}")
    return ClientOut.of(client)


@delete(PATH, guards=[requires_scopes], opt=ADMIN, responses=problems(401, 403, 404, 503))
async def revoke_client(
    client_id: FromPath[uuid.UUID], clients: NamedDependency[ClientStore]
) -> None:
    """Revoke a client: no new tokens, and the tokens it holds are refused from now on.

    Revoking a revoked client is a no-op (``204``); an unknown one is ``404``.
    """
    if not await clients.revoke(client_id) and await clients.get(client_id) is None:
        raise NotFoundException(detail=f"no client {client_id}")


@post(
    f"{PATH}/rotate",
    guards=[requires_scopes],
    opt=ADMIN,
    status_code=200,
    responses=problems(401, 403, 404, 503),
)
async def rotate_client(
    client_id: FromPath[uuid.UUID], clients: NamedDependency[ClientStore]
) -> ClientSecret:
    """A new secret for an active client; the old secret and every token issued with it stop
    working now. A revoked or expired client is ``404``, like an unknown one."""
    rotated = await clients.rotate(client_id)
    if rotated is None:
        raise NotFoundException(detail=f"no active client {client_id}")
    return _shown_once(*rotated)


@post(
    f"{PATH}/rotate-callback-secret",
    guards=[requires_scopes],
    opt=ADMIN,
    status_code=200,
    responses=problems(401, 403, 404, 422, 503),
)
async def rotate_callback_secret(
    client_id: FromPath[uuid.UUID],
    clients: NamedDependency[ClientStore],
    settings: NamedDependency[Settings],
    grace_seconds: Annotated[float | None, QueryParameter(ge=0, le=MAX_GRACE_SECONDS)] = None,
) -> CallbackSecret:
    """A new secret to sign the client's callbacks with, shown this once. The previous one
    signs beside it (a second ``v1`` in ``X-Jobq-Signature``) for ``grace_seconds``
    (default ``JOBQ_CALLBACK_SECRET_GRACE_SECONDS``; ``0``: it stops now, as after a leak)."""
    grace = settings.callback_secret_grace_seconds if grace_seconds is None else grace_seconds
    rotated = await clients.rotate_callback_secret(client_id, grace)
    if rotated is None:
        raise NotFoundException(detail=f"no client {client_id}")
    secret, until = rotated
    return CallbackSecret(client_id=client_id, callback_secret=secret, previous_valid_until=until)


ROUTES = [
    create_client, list_clients, get_client, revoke_client, rotate_client, rotate_callback_secret,
]  # fmt: skip
