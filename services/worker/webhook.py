"""The ``webhook`` handler: one HTTP request whose URL comes from an untrusted payload.

Each destination, the URL and every redirect, goes through ``shared.egress``: resolved once,
refused if any of its addresses is not public (unless ``JOBQ_WEBHOOK_ALLOW`` permits it), and
connected to at the very address that was checked.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import httpx
import msgspec

from shared import egress
from shared.egress import (
    HOST,
    Answer,
    EgressError,
    Network,
    RefusedDestination,
    Resolve,
    address_class,
    parse_allow,
    refusal,
    resolve_host,
)
from shared.errors import ConfigError, InvalidPayload, PermanentFailure

if TYPE_CHECKING:
    from shared.config import Settings

__all__ = ["RefusedDestination", "address_class", "refusal", "resolve_host"]

#: Headers that frame the message or address the connection: jobq derives them from the URL and
#: body, and a payload setting them could reach another virtual host or smuggle a request.
#: Responses are asked for uncompressed and read raw; an encoded one is refused, so the size
#: cap bounds memory (no zip bombs).
FORBIDDEN_HEADERS = frozenset(
    {
        "host",
        "accept-encoding",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "upgrade",
    }
)
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_USERINFO = re.compile(r"//[^/?#@]*@")
_JSON = {"Content-Type": "application/json"}


class WebhookPayload(msgspec.Struct, forbid_unknown_fields=True):
    url: str
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "POST"
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    #: Sent as JSON; absent means no body (``null`` sends ``null``).
    body: Any = msgspec.UNSET


class WebhookError(EgressError):
    """A webhook attempt failed in a way that may pass later (timeout, network, 408/429/5xx)."""


@dataclass(frozen=True, slots=True)
class WebhookPolicy:
    """Where the ``webhook`` handler may connect, and how long and how much it may read."""

    allow_hosts: frozenset[str] = frozenset()
    allow_networks: tuple[Network, ...] = ()
    timeout_seconds: float = 10.0
    max_response_bytes: int = 256 * 1024
    max_redirects: int = 5

    @classmethod
    def from_settings(cls, settings: Settings) -> WebhookPolicy:
        hosts, networks = parse_allow(settings.webhook_allow)
        policy = cls(
            hosts,
            networks,
            settings.webhook_timeout_seconds,
            settings.webhook_max_response_bytes,
            settings.webhook_max_redirects,
        )
        if (
            policy.timeout_seconds <= 0
            or policy.max_response_bytes <= 0
            or policy.max_redirects < 0
        ):
            raise ConfigError(
                "JOBQ_WEBHOOK_TIMEOUT_SECONDS and JOBQ_WEBHOOK_MAX_RESPONSE_BYTES must be positive, "
                "JOBQ_WEBHOOK_MAX_REDIRECTS not negative"
            )
        return policy


# -- pure checks ----------------------------------------------------------------------------


def parse_target(url: str) -> httpx.URL:
    """``url`` parsed as httpx will send it (so the host checked is the host connected to)."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise InvalidPayload(f"invalid webhook URL {_redacted(url)!r}: {exc}") from None
    if parsed.scheme not in ("http", "https"):
        raise RefusedDestination(f"refused scheme {parsed.scheme!r}: only http and https")
    if not HOST.fullmatch(parsed.raw_host.decode("ascii")):
        raise InvalidPayload(f"webhook URL {_redacted(url)!r} has no valid host")
    return parsed


def _redacted(url: str) -> str:
    """``url`` without credentials, fit for an error message that is logged and stored."""
    return _USERINFO.sub("//***@", url)


def check_headers(headers: dict[str, str]) -> None:
    for name, value in headers.items():
        if not _TOKEN.fullmatch(name) or any(c in value for c in "\r\n\x00"):
            raise InvalidPayload(f"invalid webhook header {name!r}")
        if name.lower() in FORBIDDEN_HEADERS:
            raise InvalidPayload(f"webhook header {name!r} is set by jobq, not the payload")


def redirected_method(status: int, method: str) -> str:
    """As browsers and httpx do: 303 turns any method into GET, 301/302 turn POST into GET."""
    if status == 303 or (status in (301, 302) and method == "POST"):
        return "GET"
    return method


def _origin(url: httpx.URL) -> tuple[str, bytes, int | None]:
    return url.scheme, url.raw_host, url.port


def _decode(content_type: str, data: bytes) -> Any:
    """JSON if labelled so and valid, else text; never a NUL, which PostgreSQL's jsonb refuses."""
    text = data.decode("utf-8", "replace").replace("\x00", "\ufffd")
    mime = content_type.split(";")[0].strip().lower()
    if (mime == "application/json" or mime.endswith("+json")) and "\\u0000" not in text:
        try:
            return msgspec.json.decode(text)
        except msgspec.DecodeError:
            pass
    return text


# -- I/O ------------------------------------------------------------------------------------


async def destination(url: httpx.URL, policy: WebhookPolicy, resolve: Resolve) -> str:
    """The address to connect to for ``url``: every answer is checked, the first is used."""
    try:
        return await egress.destination(url, policy, resolve)
    except EgressError as exc:
        raise WebhookError(str(exc)) from None


async def _exchange(
    url: httpx.URL,
    address: str,
    method: str,
    headers: dict[str, str],
    content: bytes | None,
    policy: WebhookPolicy,
    tls: ssl.SSLContext,
) -> Answer:
    """One hop, sent to the checked ``address``; an encoded or oversized response fails it."""
    host = url.raw_host.decode("ascii")
    try:
        answer = await egress.exchange(
            url, address, method, headers, content, tls, policy.max_response_bytes
        )
    except EgressError as exc:
        raise WebhookError(str(exc)) from None
    if answer.content_encoding not in ("", "identity"):
        raise PermanentFailure(
            f"{host} sent a {answer.content_encoding!r}-encoded response although asked for identity"
        )
    if len(answer.data) > policy.max_response_bytes:
        raise PermanentFailure(f"response from {host} exceeds {policy.max_response_bytes} bytes")
    return answer


async def _follow(
    payload: WebhookPayload, policy: WebhookPolicy, tls: ssl.SSLContext, resolve: Resolve
) -> tuple[httpx.URL, Answer]:
    """Send the request, following redirects by hand: each destination is checked like the
    first. The payload's headers go only to its URL's origin, not wherever a redirect points."""
    check_headers(payload.headers)
    url = start = parse_target(payload.url)
    method: str = payload.method
    content = None if payload.body is msgspec.UNSET else msgspec.json.encode(payload.body)
    json_type = {} if "content-type" in map(str.lower, payload.headers) else _JSON
    for _ in range(policy.max_redirects + 1):
        address = await destination(url, policy, resolve)
        headers = payload.headers if _origin(url) == _origin(start) else {}
        if content is not None:
            headers = {**json_type, **headers}
        answer = await _exchange(url, address, method, headers, content, policy, tls)
        if answer.location is None:
            return url, answer
        if (redirected := redirected_method(answer.status, method)) != method:
            method, content = redirected, None
        url = parse_target(str(url.join(answer.location)))
    raise PermanentFailure(f"more than {policy.max_redirects} redirects")


async def deliver(
    payload: WebhookPayload,
    policy: WebhookPolicy,
    tls: ssl.SSLContext,
    resolve: Resolve = resolve_host,
) -> dict[str, Any]:
    """Send the webhook and judge the answer: 2xx succeeds, 408/429/5xx may pass on a retry,
    anything else will not.

    One deadline covers it all (DNS, connects, redirects, reading). A response over the size
    cap fails the attempt rather than being cut: a truncated body would pass for the real one."""
    try:
        async with asyncio.timeout(policy.timeout_seconds):
            url, answer = await _follow(payload, policy, tls, resolve)
    except TimeoutError:
        raise WebhookError(f"no complete response within {policy.timeout_seconds}s") from None
    if 200 <= answer.status < 300:
        return {"status": answer.status, "body": _decode(answer.content_type, answer.data)}
    snippet = answer.data[:200].decode("utf-8", "replace")
    message = f"{url.host} answered HTTP {answer.status}: {snippet}"
    if answer.status >= 500 or answer.status in (408, 429):
        raise WebhookError(message)
    raise PermanentFailure(message)


def webhook_handler(policy: WebhookPolicy) -> Callable[[WebhookPayload], Awaitable[dict[str, Any]]]:
    """The ``webhook`` handler bound to ``policy``; the worker registers it at start-up.

    Its TLS context (httpx's default: certifi's CAs, hostname checks) is built here, once:
    loading the CAs takes some 60 ms of CPU, too long to block the event loop per request."""
    tls = httpx.create_ssl_context(trust_env=False)

    async def webhook(payload: WebhookPayload) -> dict[str, Any]:
        return await deliver(payload, policy, tls)

    return webhook
