"""The external issuer's signing keys, fetched from its JWKS URL and cached.

Keys are refetched when they are older than ``max_age`` or when a token names a ``kid`` the
cache lacks (the IdP rotated), but at most once per ``min_refresh`` seconds, so tokens with
made-up ``kid`` values cannot make the API hammer the IdP.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping
from typing import Any

import httpx
import jwt

from services.api.keys import Key
from services.api.tokens import ExternalIssuer
from shared.errors import DependencyUnavailable

log = logging.getLogger("jobq.api.oidc")
MAX_JWKS_BYTES = 1024 * 1024


def keys_of(jwks: Any, algorithms: tuple[str, ...]) -> dict[str, Key]:
    """The usable signing keys of a JWKS document: with a ``kid``, for an allowed algorithm."""
    keys: dict[str, Key] = {}
    for jwk in jwks.get("keys", []) if isinstance(jwks, dict) else []:
        if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig":
            continue
        try:
            parsed = jwt.PyJWK(jwk)
        except (jwt.PyJWTError, TypeError, ValueError, KeyError):  # a malformed key: skip it
            continue
        if parsed.key_id and parsed.algorithm_name in algorithms:
            keys[parsed.key_id] = Key(parsed.key_id, parsed.algorithm_name, verifying=parsed.key)
    return keys


class JwksCache:
    def __init__(
        self,
        idp: ExternalIssuer,
        client: httpx.AsyncClient,
        max_age: float = 300.0,
        min_refresh: float = 10.0,
    ) -> None:
        self.idp = idp
        self.client = client
        self.max_age = max_age
        self.min_refresh = min_refresh
        self._keys: dict[str, Key] = {}
        self._fetched = -float("inf")
        self._lock = asyncio.Lock()

    async def keys(self, kid: str | None) -> Mapping[str, Key]:
        """The cached keys, refreshed first if stale or lacking ``kid``."""
        if self._wants_refresh(kid):
            async with self._lock:
                if self._wants_refresh(kid):
                    await self._refresh()
        return self._keys

    def _wants_refresh(self, kid: str | None) -> bool:
        age = time.monotonic() - self._fetched
        return age > self.max_age or (kid not in self._keys and age > self.min_refresh)

    async def _refresh(self) -> None:
        self._fetched = time.monotonic()
        try:
            async with self.client.stream("GET", self.idp.jwks_url) as r:
                r.raise_for_status()
                body = b""
                async for chunk in r.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_JWKS_BYTES:
                        raise ValueError("JWKS document over 1 MiB")
            self._keys = keys_of(json.loads(body), self.idp.algorithms)
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("cannot fetch the IdP's JWKS", extra={"error": repr(exc)})
            if not self._keys:
                raise DependencyUnavailable("the identity provider's keys are unavailable") from exc
