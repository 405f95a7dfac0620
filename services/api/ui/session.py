"""The dashboard's session: the API's own token in a cookie, CSRF tokens bound to it, its
security headers, and its errors as pages (docs/design.md §5.9).

A page accepts the cookie set by the login form or an ``Authorization: Bearer`` header
(``services.api.auth.BearerAuth``); both are verified by the API's ``Authenticator`` (the
same scopes, tenant and revocation). A form that changes something carries a CSRF token
derived from the session's token, which a page of another site can neither read nor compute
(and the cookie is ``SameSite=Strict`` too).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import TYPE_CHECKING, Any

from litestar import Request, Response
from litestar.datastructures import Cookie, MutableScopeHeaders
from litestar.exceptions import HTTPException, NotAuthorizedException, PermissionDeniedException
from litestar.response import Redirect, Template

from services.api import errors

if TYPE_CHECKING:
    from litestar.types import ExceptionHandlersMap, Message, Scope

#: The session cookie (the bearer token) and the login form's own CSRF cookie.
SESSION = "jobq_ui"
LOGIN_CSRF = "jobq_ui_login"
PREFIX = "/ui"
LOGIN = "/ui/login"
#: Served without a session (``services.api.auth.BearerAuth``'s ``exclude``).
PUBLIC_PATHS = [f"^{LOGIN}$", f"^{PREFIX}/static/"]

#: On every dashboard response, pages, redirects and errors alike.
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; "
        "form-action 'self'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def csrf_token(session_token: str) -> str:
    """The CSRF token of a session: a digest of its bearer token, so it needs no state and
    dies with the token."""
    return hmac.new(b"jobq-ui-csrf", session_token.encode(), hashlib.sha256).hexdigest()


def check_csrf(request: Request[Any, str, Any], presented: str) -> None:
    """``403`` unless ``presented`` is the session's CSRF token."""
    if not hmac.compare_digest(presented.encode(), csrf_token(request.auth).encode()):
        raise PermissionDeniedException(detail="the form's CSRF token is missing or wrong")


def cookie(
    request: Request[Any, Any, Any], key: str, value: str, max_age: int, path: str
) -> Cookie:
    """``HttpOnly``, ``SameSite=Strict``, ``Secure`` when the page was served over https."""
    return Cookie(
        key=key, value=value, max_age=max_age, path=path, httponly=True, samesite="strict",
        secure=request.url.scheme == "https",
    )  # fmt: skip


async def security_headers(message: Message, scope: Scope) -> None:
    """``before_send`` hook of the app: the dashboard's headers on its responses only."""
    if message["type"] == "http.response.start" and scope["path"].startswith(PREFIX):
        headers = MutableScopeHeaders.from_message(message)
        for name, value in HEADERS.items():
            if name == "Cache-Control" and scope["path"].startswith(f"{PREFIX}/static/"):
                continue
            headers[name] = value


def error_page(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """A refused token sends the browser to the login form (saying the session ended, if it
    had one); any other error is the API's problem (``services.api.errors``) as a page."""
    if isinstance(exc, NotAuthorizedException):
        ended = SESSION in request.cookies
        redirect = Redirect(f"{LOGIN}?expired=1" if ended else LOGIN, status_code=303)
        if ended:
            redirect.delete_cookie(SESSION, path=PREFIX)
        return redirect
    handler = next(
        errors.EXCEPTION_HANDLERS[cls]
        for cls in type(exc).__mro__
        if cls in errors.EXCEPTION_HANDLERS
    )
    problem = handler(request, exc)
    body = problem.content
    return Template(
        template_name="error.html",
        context={"problem": body, "nav": ()},
        status_code=problem.status_code or 500,
        headers={k: v for k, v in problem.headers.items() if k.lower() == "retry-after"},
    )


EXCEPTION_HANDLERS: ExceptionHandlersMap = {HTTPException: error_page, Exception: error_page}
