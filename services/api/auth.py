"""Bearer authentication (middleware) and scope checks (guard)."""

from __future__ import annotations

import hmac
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.middleware.authentication import (
    AbstractAuthenticationMiddleware,
    AuthenticationResult,
)

from services.api.tokens import (
    InvalidToken,
    Principal,
    TokenConfig,
    VerifiedTokens,
    peek,
    verify_external,
)
from shared.credentials import credential_digest

if TYPE_CHECKING:
    from litestar.connection import ASGIConnection
    from litestar.handlers.base import BaseRouteHandler
    from litestar.types import ASGIApp

    from services.api.oidc import JwksCache
    from shared.db.clients import ClientGrant

    #: The active client's grant for an id, ``None`` if unknown, revoked or expired
    #: (``ClientStore.grants``, one lookup for the requests of one moment).
    GrantLookup = Callable[[uuid.UUID], Awaitable[ClientGrant | None]]

#: Paths served without a token (docs/design.md §5.1).
PUBLIC_PATHS = [
    "^/health$",
    "^/health/ready$",
    "^/metrics$",
    "^/schema($|/)",
    "^/v1/auth/token$",
    r"^/\.well-known/jwks\.json$",
]


class Authenticator:
    """Turns a bearer token into a principal, or raises ``InvalidToken``.

    jobq's own tokens are also checked against the client's row on every request, so a
    revoked, expired or rotated client's tokens stop working at once, on every API replica,
    and a token naming another tenant or more scopes than its client holds is refused.
    """

    def __init__(self, tokens: TokenConfig, external: JwksCache | None = None) -> None:
        self.tokens = tokens
        self.external = external
        self.verified = VerifiedTokens(tokens)

    async def authenticate(self, token: str, grants: GrantLookup) -> Principal:
        if self.external:
            issuer, kid = peek(token)
            if issuer == self.external.idp.issuer:
                keys = await self.external.keys(kid if isinstance(kid, str) else None)
                return verify_external(self.external.idp, keys, token, self.tokens.leeway_seconds)
        principal = self.verified.verify(token)
        try:
            client_id = uuid.UUID(principal.client_id)
        except ValueError:
            raise InvalidToken("unknown client") from None
        grant = await grants(client_id)
        if grant is None or not hmac.compare_digest(
            credential_digest(grant.secret_hash), principal.credential or ""
        ):
            raise InvalidToken("the client was revoked, expired or rotated its secret")
        # A token minted with the signing key must still be its client's: same tenant, no
        # scope the client lacks (a token may carry fewer, as ``scope=`` asked).
        if principal.tenant != grant.tenant or not principal.scopes <= grant.scopes:
            raise InvalidToken("the token claims more than its client holds")
        return principal


class BearerAuth(AbstractAuthenticationMiddleware):
    """Verifies ``Authorization: Bearer <JWT>``; anything else is 401. Paths matching
    ``exclude`` (by default ``PUBLIC_PATHS``) are served without it; under the path prefix of
    ``session_cookie`` (the dashboard's, ``services.api.ui.session``), its cookie may carry
    the token instead."""

    def __init__(
        self,
        app: ASGIApp,
        authenticator: Authenticator,
        exclude: list[str] | None = None,
        session_cookie: tuple[str, str] | None = None,
    ) -> None:
        super().__init__(app, exclude=PUBLIC_PATHS if exclude is None else exclude)
        self.authenticator = authenticator
        self.session_cookie = session_cookie

    def token_of(self, connection: ASGIConnection[Any, Any, Any, Any]) -> str:
        """The presented token, ``""`` if none."""
        scheme, _, token = connection.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        if self.session_cookie and connection.scope["path"].startswith(self.session_cookie[0]):
            return connection.cookies.get(self.session_cookie[1], "")
        return ""

    async def authenticate_request(
        self, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        token = self.token_of(connection)
        if not token:
            raise NotAuthorizedException(
                detail="a bearer token is required", headers={"WWW-Authenticate": "Bearer"}
            )
        try:
            principal = await self.authenticator.authenticate(token, connection.app.state["grants"])
        except InvalidToken:
            raise NotAuthorizedException(
                detail="invalid or expired token",
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            ) from None
        return AuthenticationResult(user=principal, auth=token)


async def requires_scopes(
    connection: ASGIConnection[Any, Principal, Any, Any], handler: BaseRouteHandler
) -> None:
    """Guard: the token must grant every scope the handler declares in ``opt["scopes"]``.

    Async on purpose: Litestar runs a sync guard in a worker thread, a thread hop per request.
    """
    missing = set(handler.opt.get("scopes", ())) - connection.user.scopes
    if missing:
        raise PermissionDeniedException(detail=f"missing scope: {' '.join(sorted(missing))}")
