"""``POST /v1/auth/token``: OAuth2 client credentials (RFC 6749 §4.4), form or Basic auth;
``GET /.well-known/jwks.json``: the public keys that verify jobq's tokens (asymmetric mode)."""

from __future__ import annotations

import base64
import binascii
import time
import uuid
from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Request, get, post
from litestar.di import NamedDependency
from litestar.enums import RequestEncodingType
from litestar.exceptions import ClientException, NotAuthorizedException
from litestar.params import Body

from services.api.limits import TokenThrottle
from services.api.openapi import problems
from services.api.schemas import TokenOut
from services.api.tokens import Principal, TokenConfig, issue, lifetime
from shared.credentials import credential_digest, hash_secret, secret_matches
from shared.db.clients import ClientStore

#: Looked up for a client id that is not a UUID, so that every refusal costs one lookup.
NO_CLIENT = uuid.UUID(int=0)
#: The secret hash and expiry checked when no client was found, so that every refusal costs
#: one hash and comparison: a hash of the real length that no secret is known to have.
UNKNOWN_CLIENT: tuple[str, datetime | None] = ("0" * len(hash_secret("")), None)


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


@post("/v1/auth/token", status_code=200, responses=problems(401, 413, 422, 429, 503))
async def token(
    request: Request[Any, Any, Any],
    data: Annotated[TokenForm, Body(media_type=RequestEncodingType.URL_ENCODED)],
    clients: NamedDependency[ClientStore],
    tokens: NamedDependency[TokenConfig],
    throttle: NamedDependency[TokenThrottle],
) -> TokenOut:
    """Exchange client credentials for a short-lived bearer token.

    Every refusal does the same work (one lookup, one hash and comparison), so its timing does
    not tell a guesser whether the client id exists; failures are throttled per client id and
    per source address.
    """
    if data.grant_type != "client_credentials":
        raise ClientException(
            detail="grant_type must be client_credentials",
            extra={"error": "unsupported_grant_type"},
        )
    creds = _basic_credentials(request.headers.get("authorization", ""))
    client_id, secret = creds or (data.client_id or "", data.client_secret or "")
    address = request.client.host if request.client else ""
    return await exchange(clients, tokens, throttle, client_id, secret, data.scope, address)


async def exchange(
    clients: ClientStore,
    tokens: TokenConfig,
    throttle: TokenThrottle,
    client_id: str,
    secret: str,
    scope: str | None,
    address: str,
) -> TokenOut:
    """Client credentials to a token, or ``NotAuthorizedException`` (``invalid_client``),
    ``ClientException`` (``invalid_scope``) or ``TooManyRequests``: the token endpoint's and
    the dashboard's login form's (``services.api.ui.login``) one check."""
    try:
        # Parsed, so that spellings of one id (case, braces, urn:uuid:) share its budget.
        key = uuid.UUID(client_id)
    except ValueError:
        key = NO_CLIENT
    # Before the credentials are checked: a refused guess must learn nothing.
    throttle.attempt(str(key), address)
    try:
        client = await clients.credentials(key)
    except BaseException:
        throttle.refund(str(key), address)
        raise
    now = time.time()
    stored_hash, expires_at = (
        UNKNOWN_CLIENT if client is None else (client.secret_hash, client.expires_at)
    )
    matches = secret_matches(secret, stored_hash)
    ttl = lifetime(tokens, now, expires_at)
    if client is None or not matches or client.revoked_at is not None or ttl <= 0:
        raise _invalid_client()
    throttle.refund(str(key), address)
    scopes = frozenset(client.scopes)
    if scope:
        asked = frozenset(scope.split())
        if not asked <= scopes:
            raise ClientException(
                detail="scope exceeds the client's scopes", extra={"error": "invalid_scope"}
            )
        scopes = asked
    principal = Principal(
        str(client.id), client.tenant, scopes, credential=credential_digest(client.secret_hash)
    )
    return TokenOut(
        access_token=issue(tokens, principal, now, ttl),
        token_type="Bearer",
        expires_in=ttl,
        scope=" ".join(sorted(scopes)),
    )


@get("/.well-known/jwks.json")
async def jwks(tokens: NamedDependency[TokenConfig]) -> dict[str, Any]:
    """The public keys (JWK set) that verify jobq's tokens; empty in HS256 mode."""
    return tokens.keys.jwks()


ROUTES = [token, jwks]
