"""``POST /v1/auth/token``: OAuth2 client credentials (RFC 6749 §4.4), form or Basic auth;
``GET /.well-known/jwks.json``: the public keys that verify jobq's tokens (asymmetric mode)."""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
from litestar import Request, get, post
from litestar.di import NamedDependency
from litestar.enums import RequestEncodingType
from litestar.exceptions import ClientException, NotAuthorizedException
from litestar.params import Body

from services.api.openapi import problems
from services.api.schemas import TokenOut
from services.api.tokens import Principal, TokenConfig, issue
from shared.credentials import credential_digest, secret_matches
from shared.db.store import ClientStore


class TokenForm(msgspec.Struct):
    """Unknown parameters are ignored, as RFC 6749 §3.2 requires (JSON bodies refuse them)."""

    grant_type: str
    client_id: str | None = None
    client_secret: str | None = None
    scope: str | None = None


def _basic_credentials(header: str) -> tuple[str, str] | None:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        client_id, sep, secret = (
            base64.b64decode(value.strip(), validate=True).decode().partition(":")
        )
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (client_id, secret) if sep else None


def _invalid_client() -> NotAuthorizedException:
    return NotAuthorizedException(
        detail="invalid client credentials",
        headers={"WWW-Authenticate": 'Basic realm="jobq"'},
        extra={"error": "invalid_client"},
    )


@post("/v1/auth/token", status_code=200, responses=problems(401, 413, 422, 503))
async def token(
    request: Request[Any, Any, Any],
    data: Annotated[TokenForm, Body(media_type=RequestEncodingType.URL_ENCODED)],
    clients: NamedDependency[ClientStore],
    tokens: NamedDependency[TokenConfig],
) -> TokenOut:
    """Exchange client credentials for a short-lived bearer token."""
    if data.grant_type != "client_credentials":
        raise ClientException(
            detail="grant_type must be client_credentials",
            extra={"error": "unsupported_grant_type"},
        )
    creds = _basic_credentials(request.headers.get("authorization", ""))
    client_id, secret = creds or (data.client_id or "", data.client_secret or "")
    try:
        client = await clients.get(uuid.UUID(client_id))
    except ValueError:
        client = None
    now = datetime.now(UTC)
    if (
        client is None
        or not secret_matches(secret, client.secret_hash)
        or client.revoked_at is not None
        or (client.expires_at is not None and client.expires_at <= now)
    ):
        raise _invalid_client()
    scopes = frozenset(client.scopes)
    if data.scope:
        asked = frozenset(data.scope.split())
        if not asked <= scopes:
            raise ClientException(
                detail="scope exceeds the client's scopes", extra={"error": "invalid_scope"}
            )
        scopes = asked
    principal = Principal(
        str(client.id), client.tenant, scopes, credential=credential_digest(client.secret_hash)
    )
    return TokenOut(
        access_token=issue(tokens, principal),
        token_type="Bearer",
        expires_in=tokens.ttl_seconds,
        scope=" ".join(sorted(scopes)),
    )


@get("/.well-known/jwks.json")
async def jwks(tokens: NamedDependency[TokenConfig]) -> dict[str, Any]:
    """The public keys (JWK set) that verify jobq's tokens; empty in HS256 mode."""
    return tokens.keys.jwks()


ROUTES = [token, jwks]
