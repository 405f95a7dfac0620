"""Bearer authentication (middleware) and scope checks (guard)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.middleware.authentication import (
    AbstractAuthenticationMiddleware,
    AuthenticationResult,
)

from services.api.tokens import InvalidToken, Principal, TokenConfig, verify

if TYPE_CHECKING:
    from litestar.connection import ASGIConnection
    from litestar.handlers.base import BaseRouteHandler
    from litestar.types import ASGIApp

#: Paths served without a token (SPEC §5).
PUBLIC_PATHS = ["^/health", "^/schema", "^/metrics", "^/v1/auth/token$"]


class BearerAuth(AbstractAuthenticationMiddleware):
    """Verifies ``Authorization: Bearer <JWT>``; anything else is 401."""

    def __init__(self, app: ASGIApp, tokens: TokenConfig) -> None:
        super().__init__(app, exclude=PUBLIC_PATHS)
        self.tokens = tokens

    async def authenticate_request(
        self, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        scheme, _, token = connection.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise NotAuthorizedException(
                detail="a bearer token is required", headers={"WWW-Authenticate": "Bearer"}
            )
        try:
            principal = verify(self.tokens, token.strip())
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
