"""``/ui/login`` and ``/ui/logout``: client credentials for a session cookie.

The form's credentials go through the token endpoint's own check
(``services.api.routes.auth.exchange``: the same throttle, timing and refusals); the token it
issues is the session, kept in an ``HttpOnly``, ``SameSite=Strict`` cookie scoped to ``/ui``
that lives as long as the token. The form carries a CSRF token of its own, matched with a
cookie set when it was served, so no other site can log a browser in as someone else.
"""

from __future__ import annotations

import hmac
import secrets
from typing import Annotated, Any

import msgspec
from litestar import Request, get, post
from litestar.di import NamedDependency
from litestar.enums import RequestEncodingType
from litestar.exceptions import ClientException, NotAuthorizedException
from litestar.params import Body, FromQuery
from litestar.response import Redirect, Template

from services.api.limits import TokenThrottle, TooManyRequests
from services.api.routes.auth import exchange
from services.api.tokens import TokenConfig
from services.api.ui.render import UiRequest
from services.api.ui.session import LOGIN, LOGIN_CSRF, PREFIX, SESSION, check_csrf, cookie
from shared.db.clients import ClientStore

#: How long a login form may wait to be sent.
FORM_SECONDS = 3600


class LoginForm(msgspec.Struct):
    client_id: str = ""
    client_secret: str = ""
    csrf: str = ""


class CsrfForm(msgspec.Struct):
    csrf: str = ""


def _form(
    request: Request[Any, Any, Any],
    message: str = "",
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> Template:
    token = secrets.token_urlsafe(24)
    return Template(
        template_name="login.html",
        context={"nav": (), "csrf": token, "message": message},
        status_code=status,
        headers=headers,
        cookies=[cookie(request, LOGIN_CSRF, token, FORM_SECONDS, LOGIN)],
    )


@get(LOGIN, include_in_schema=False)
async def login_form(request: Request[Any, Any, Any], expired: FromQuery[bool] = False) -> Template:
    """The form; ``expired``: the session ended (the token expired or was revoked)."""
    return _form(request, "Your session ended: log in again." if expired else "")


@post(LOGIN, include_in_schema=False, status_code=303)
async def login(
    request: Request[Any, Any, Any],
    data: Annotated[LoginForm, Body(media_type=RequestEncodingType.URL_ENCODED)],
    clients: NamedDependency[ClientStore],
    tokens: NamedDependency[TokenConfig],
    throttle: NamedDependency[TokenThrottle],
) -> Template | Redirect:
    """Valid credentials: the session cookie and the overview; otherwise the form again."""
    expected = request.cookies.get(LOGIN_CSRF, "")
    if not expected or not hmac.compare_digest(expected.encode(), data.csrf.encode()):
        return _form(request, "The form expired: try again.", 403)
    address = request.client.host if request.client else ""
    try:
        issued = await exchange(
            clients, tokens, throttle, data.client_id.strip(), data.client_secret, None, address
        )
    except (NotAuthorizedException, ClientException):
        return _form(request, "Unknown client id or wrong secret.", 401)
    except TooManyRequests as exc:
        wait = str(exc.retry_after)
        return _form(
            request, f"Too many failed attempts: wait {wait}s.", 429, {"Retry-After": wait}
        )
    redirect = Redirect(
        PREFIX,
        status_code=303,
        cookies=[cookie(request, SESSION, issued.access_token, issued.expires_in, PREFIX)],
    )
    redirect.delete_cookie(LOGIN_CSRF, path=LOGIN)
    return redirect


@post("/ui/logout", include_in_schema=False, status_code=303)
async def logout(
    request: UiRequest,
    data: Annotated[CsrfForm, Body(media_type=RequestEncodingType.URL_ENCODED)],
) -> Redirect:
    """Forget the session's cookie (the token itself lives out its few minutes)."""
    check_csrf(request, data.csrf)
    redirect = Redirect(LOGIN, status_code=303)
    redirect.delete_cookie(SESSION, path=PREFIX)
    return redirect


ROUTES = [login_form, login, logout]
