"""JWT issue and verification: HS256 pinned, every claim required, small leeway. Pure."""

from __future__ import annotations

import hashlib
import time
import uuid
from dataclasses import dataclass

import jwt

ALGORITHM = "HS256"
REQUIRED = ["exp", "iat", "iss", "aud", "sub", "scope", "tenant", "jti"]


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the client, its tenant, and what it may do."""

    client_id: str
    tenant: str
    scopes: frozenset[str]


@dataclass(frozen=True, slots=True)
class TokenConfig:
    secret: str
    issuer: str
    audience: str
    ttl_seconds: int
    leeway_seconds: int

    @property
    def kid(self) -> str:
        """Key id naming the secret without revealing it, so keys can rotate by ``kid``."""
        return hashlib.sha256(self.secret.encode()).hexdigest()[:16]


class InvalidToken(Exception):
    """The bearer token is missing, malformed, forged, expired or not for us."""


def issue(cfg: TokenConfig, principal: Principal, now: float | None = None) -> str:
    now = time.time() if now is None else now
    claims = {
        "iss": cfg.issuer,
        "aud": cfg.audience,
        "sub": principal.client_id,
        "tenant": principal.tenant,
        "scope": " ".join(sorted(principal.scopes)),
        "iat": int(now),
        "exp": int(now) + cfg.ttl_seconds,
        "jti": str(uuid.uuid4()),
    }
    return jwt.encode(claims, cfg.secret, algorithm=ALGORITHM, headers={"kid": cfg.kid})


def verify(cfg: TokenConfig, token: str) -> Principal:
    """The principal a token names; ``InvalidToken`` for anything else."""
    try:
        header = jwt.get_unverified_header(token)
        if header.get("kid") != cfg.kid:
            raise InvalidToken("unknown signing key")
        claims = jwt.decode(
            token,
            cfg.secret,
            algorithms=[ALGORITHM],
            audience=cfg.audience,
            issuer=cfg.issuer,
            leeway=cfg.leeway_seconds,
            options={"require": REQUIRED, "strict_aud": True},
        )
    except jwt.PyJWTError as exc:
        raise InvalidToken(str(exc)) from None
    scope, tenant, sub = claims["scope"], claims["tenant"], claims["sub"]
    if not all(isinstance(v, str) and v for v in (tenant, sub)) or not isinstance(scope, str):
        raise InvalidToken("malformed claims")
    return Principal(client_id=sub, tenant=tenant, scopes=frozenset(scope.split()))
