"""JWT issue and verification: pinned algorithms, every claim required, small leeway. Pure.

Two kinds of token are accepted: jobq's own (``issue``; verified by ``verify`` against the
keyring) and, optionally, an external OpenID Connect issuer's (``verify_external``; its keys
come from its JWKS, fetched by ``services.api.oidc``).
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import jwt

from services.api.keys import Key, Keyring
from shared.credentials import SCOPES, TENANT

#: Claims every jobq token carries; ``cv`` names the client secret it was issued against.
REQUIRED = ["exp", "iat", "iss", "aud", "sub", "scope", "tenant", "jti", "cv"]
#: Claims an external issuer's token must carry (tenant and scopes are mapped separately).
REQUIRED_EXTERNAL = ["exp", "iat", "iss", "aud", "sub"]
EXTERNAL_SCOPES = SCOPES - {"admin"}


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the client, its tenant, and what it may do."""

    client_id: str
    tenant: str
    scopes: frozenset[str]
    #: For jobq's own tokens, the digest of the client secret they were issued against; the
    #: API refuses them once the client is revoked, expired or rotated. ``None``: external.
    credential: str | None = None


@dataclass(frozen=True, slots=True)
class TokenConfig:
    keys: Keyring
    issuer: str
    audience: str
    ttl_seconds: int
    leeway_seconds: int


@dataclass(frozen=True, slots=True)
class ExternalIssuer:
    """An organisation's own IdP, and how its claims map to a jobq tenant and scopes."""

    issuer: str
    audience: str
    jwks_url: str
    algorithms: tuple[str, ...]
    tenant_claim: str
    scope_claim: str


class InvalidToken(Exception):
    """The bearer token is missing, malformed, forged, expired or not for us."""


def lifetime(cfg: TokenConfig, now: float, not_after: datetime | None) -> int:
    """Seconds a token issued at ``now`` lives: the configured TTL, cut short so that it never
    outlives its client (which expires at ``not_after``); 0 or less: the client has expired."""
    if not_after is None:
        return cfg.ttl_seconds
    return min(cfg.ttl_seconds, math.floor(not_after.timestamp() - now))


def issue(
    cfg: TokenConfig, principal: Principal, now: float | None = None, ttl: int | None = None
) -> str:
    """A signed token for ``principal``, living ``ttl`` seconds (default: the configured TTL)."""
    now = time.time() if now is None else now
    claims = {
        "iss": cfg.issuer,
        "aud": cfg.audience,
        "sub": principal.client_id,
        "tenant": principal.tenant,
        "scope": " ".join(sorted(principal.scopes)),
        "iat": int(now),
        "exp": int(now) + (cfg.ttl_seconds if ttl is None else ttl),
        "jti": str(uuid.uuid4()),
        "cv": principal.credential,
    }
    key = cfg.keys.signing
    return jwt.encode(claims, key.signing, algorithm=key.algorithm, headers={"kid": key.kid})


def peek(token: str) -> tuple[Any, Any]:
    """The ``iss`` and ``kid`` a token claims, to choose how to verify it (never trusted)."""
    try:
        iss = jwt.decode(token, options={"verify_signature": False}).get("iss")
        return iss, jwt.get_unverified_header(token).get("kid")
    except jwt.PyJWTError:
        return None, None


def verify(cfg: TokenConfig, token: str) -> Principal:
    """The principal a jobq token names; ``InvalidToken`` for anything else."""
    return _verify(cfg, token)[0]


def _verify(cfg: TokenConfig, token: str) -> tuple[Principal, float]:
    """``verify``, with the instant the token expires."""
    claims = _decode(
        token, cfg.keys.verifying, cfg.issuer, cfg.audience, cfg.leeway_seconds, REQUIRED
    )
    scope, tenant, sub, cv = claims["scope"], claims["tenant"], claims["sub"], claims["cv"]
    if not all(isinstance(v, str) and v for v in (tenant, sub, cv)) or not isinstance(scope, str):
        raise InvalidToken("malformed claims")
    return Principal(sub, tenant, frozenset(scope.split()), credential=cv), float(claims["exp"])


class VerifiedTokens:
    """``verify`` with a memory: a token already verified skips the signature and claim
    checks (about 150 µs of CPU, the largest cost of a small request) until it expires.

    Only tokens that passed ``verify`` enter, keyed by their whole text, so nothing forged,
    altered or foreign is ever taken from here; an entry is used only while ``now`` is before
    its ``exp`` (plus the leeway), exactly what ``verify`` would check again. Whether the
    client may still act is not cached: that is the client row's check, on every request.
    """

    def __init__(self, cfg: TokenConfig, size: int = 10_000) -> None:
        self.cfg = cfg
        self.size = size
        self._seen: dict[str, tuple[Principal, float]] = {}

    def verify(self, token: str) -> Principal:
        hit = self._seen.get(token)
        if hit is not None:
            if time.time() < hit[1] + self.cfg.leeway_seconds:
                return hit[0]
            del self._seen[token]
        principal, expires = _verify(self.cfg, token)
        if len(self._seen) >= self.size:
            del self._seen[next(iter(self._seen))]  # the oldest entry
        self._seen[token] = (principal, expires)
        return principal


def verify_external(
    idp: ExternalIssuer, keys: Mapping[str, Key], token: str, leeway_seconds: int
) -> Principal:
    """The principal an external issuer's token names, its claims mapped to tenant and scopes.

    The scope claim may be a string or a list; scopes jobq does not know are dropped, and so
    is ``admin``: managing jobq's clients, for every tenant, stays with jobq's own clients.
    The principal is named ``<issuer>#<sub>``, so it never shares a local client's id.
    """
    claims = _decode(
        token, keys, idp.issuer, idp.audience, leeway_seconds, REQUIRED_EXTERNAL, strict=False
    )
    tenant, scope = claims.get(idp.tenant_claim), claims.get(idp.scope_claim)
    scopes = scope.split() if isinstance(scope, str) else scope
    sub = claims["sub"]
    if not (isinstance(tenant, str) and TENANT.fullmatch(tenant) and isinstance(sub, str) and sub):
        raise InvalidToken(f"the {idp.tenant_claim!r} claim must name a tenant")
    if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
        raise InvalidToken(f"the {idp.scope_claim!r} claim must list scopes")
    return Principal(f"{idp.issuer}#{sub}", tenant, frozenset(scopes) & EXTERNAL_SCOPES)


def _decode(
    token: str,
    keys: Mapping[str, Key],
    issuer: str,
    audience: str,
    leeway: int,
    required: list[str],
    strict: bool = True,
) -> dict[str, Any]:
    """Claims of a token signed by the key its ``kid`` names. ``strict``: ``aud`` must be
    exactly ours (jobq's tokens); else a list holding ours will do (IdPs send such lists)."""
    try:
        kid = jwt.get_unverified_header(token).get("kid")
        key = keys.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise InvalidToken("unknown signing key")
        claims: dict[str, Any] = jwt.decode(
            token,
            key.verifying,
            algorithms=[key.algorithm],
            audience=audience,
            issuer=issuer,
            leeway=leeway,
            options={"require": required, "strict_aud": strict},
        )
    except jwt.PyJWTError as exc:
        raise InvalidToken(str(exc)) from None
    return claims
