"""The ``webhook`` handler: one HTTP request whose URL comes from an untrusted payload.

So that a job cannot turn the worker into a proxy into its own network (SSRF), each destination,
the URL and every redirect, is resolved once, refused if any of its addresses is not public
(unless the operator's allow-list permits it), and connected to at the very address that was
checked, so a DNS answer that changes in between (rebinding) cannot redirect it.
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from typing import TYPE_CHECKING, Any, Literal

import httpx
import msgspec

from shared.config import csv_list
from shared.errors import ConfigError, InvalidPayload, PermanentFailure

if TYPE_CHECKING:
    from shared.config import Settings

IPAddress = IPv4Address | IPv6Address
#: Resolves a host name to addresses; a parameter so tests can play DNS.
Resolve = Callable[[str], Awaitable[list[str]]]

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
#: What a host looks like once httpx has parsed it (IDNA, lower case; IPv6 without brackets).
_HOST = re.compile(r"[a-z0-9._:-]+")
_USERINFO = re.compile(r"//[^/?#@]*@")
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_JSON = {"Content-Type": "application/json"}
_METADATA = frozenset(
    ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, ...
        "fd00:ec2::254",  # AWS over IPv6
        "100.100.100.200",  # Alibaba
        "168.63.129.16",  # Azure wire server (in public space)
        "192.0.0.192",  # Oracle Cloud (classic)
    )
)
_CGNAT = ip_network("100.64.0.0/10")
#: Special-purpose ranges that ``ipaddress`` classes as global on some Python 3.11 patch levels.
_SPECIAL = (ip_network("192.0.0.0/24"), ip_network("fec0::/10"))
_NAT64 = ip_network("64:ff9b::/96")


class WebhookPayload(msgspec.Struct, forbid_unknown_fields=True):
    url: str
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "POST"
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    #: Sent as JSON; absent means no body (``null`` sends ``null``).
    body: Any = msgspec.UNSET


class WebhookError(Exception):
    """A webhook attempt failed in a way that may pass later (timeout, network, 408/429/5xx)."""


class RefusedDestination(PermanentFailure):
    """The webhook's destination is not allowed."""


@dataclass(frozen=True, slots=True)
class WebhookPolicy:
    """Where the ``webhook`` handler may connect, and how long and how much it may read."""

    allow_hosts: frozenset[str] = frozenset()
    allow_networks: tuple[IPv4Network | IPv6Network, ...] = ()
    timeout_seconds: float = 10.0
    max_response_bytes: int = 256 * 1024
    max_redirects: int = 5

    @classmethod
    def from_settings(cls, settings: Settings) -> WebhookPolicy:
        hosts, networks = set(), []
        for entry in csv_list(settings.webhook_allow):
            try:
                networks.append(ip_network(entry, strict=False))
            except ValueError:
                name = entry.lower().rstrip(".")
                if ":" in name or not _HOST.fullmatch(name):
                    raise ConfigError(
                        f"JOBQ_WEBHOOK_ALLOW: {entry!r} is neither a host name nor a CIDR"
                    ) from None
                hosts.add(name)
        policy = cls(
            frozenset(hosts),
            tuple(networks),
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


def _unwrap(ip: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 one carries (mapped, NAT64, 6to4): it is where packets go."""
    if isinstance(ip, IPv6Address):
        if ip.ipv4_mapped:
            return ip.ipv4_mapped
        if ip in _NAT64:
            return IPv4Address(int(ip) & 0xFFFFFFFF)
        if ip.sixtofour:
            return ip.sixtofour
    return ip


def address_class(ip: IPAddress) -> str | None:
    """Why ``ip`` is no public destination, or ``None`` if it is one."""
    ip = _unwrap(ip)
    if ip in _METADATA:
        return "cloud metadata"
    checks = (
        ("unspecified", ip.is_unspecified),
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("shared (CGNAT)", ip in _CGNAT),
        ("special-purpose", any(ip in network for network in _SPECIAL)),
        ("reserved", ip.is_reserved),
        ("private", ip.is_private),
    )
    return next((name for name, hit in checks if hit), None)


def refusal(host: str, address: str, policy: WebhookPolicy) -> str | None:
    """Why connecting to ``address``, an answer for ``host``, is refused; ``None`` if it is not.

    The allow-list names hosts (whatever they resolve to) or networks (whatever the name)."""
    ip = _unwrap(ip_address(address))
    if host.lower().rstrip(".") in policy.allow_hosts:
        return None
    if any(ip in network for network in policy.allow_networks):
        return None
    kind = address_class(ip)
    if kind is None:
        return None
    named = address if host == address else f"{host} ({address})"
    return f"refused destination {named}: {kind} address"


def parse_target(url: str) -> httpx.URL:
    """``url`` parsed as httpx will send it (so the host checked is the host connected to)."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise InvalidPayload(f"invalid webhook URL {_redacted(url)!r}: {exc}") from None
    if parsed.scheme not in ("http", "https"):
        raise RefusedDestination(f"refused scheme {parsed.scheme!r}: only http and https")
    if not _HOST.fullmatch(parsed.raw_host.decode("ascii")):
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


async def resolve_host(host: str) -> list[str]:
    """The system resolver's answers, which also turn ``2130706433`` or ``0x7f.1`` into
    ``127.0.0.1``: checking its answers, not the spelling, catches every form."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


async def destination(url: httpx.URL, policy: WebhookPolicy, resolve: Resolve) -> str:
    """The address to connect to for ``url``: every answer is checked, the first is used."""
    host = url.raw_host.decode("ascii")
    try:
        addresses = await resolve(host)
    except OSError as exc:
        raise WebhookError(f"cannot resolve {host}: {exc}") from None
    for address in addresses:
        if reason := refusal(host, address, policy):
            raise RefusedDestination(reason)
    return addresses[0]


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    location: str | None
    content_type: str
    data: bytes


async def _exchange(
    url: httpx.URL,
    address: str,
    method: str,
    headers: dict[str, str],
    content: bytes | None,
    policy: WebhookPolicy,
    tls: ssl.SSLContext,
) -> _Answer:
    """One request to ``url``, sent to the checked ``address``.

    The request URL carries the address instead of the name, so httpx connects there and does
    not resolve again; the Host header and the TLS ``sni_hostname`` carry the name, and TLS
    verifies the certificate against that name. A fresh client per hop: a pooled connection,
    keyed by address, must not serve a request for another name. No environment (proxies,
    .netrc): the policy is the whole configuration."""
    host = url.raw_host.decode("ascii")
    try:
        async with (
            httpx.AsyncClient(
                verify=tls, timeout=None, follow_redirects=False, trust_env=False
            ) as client,
            client.stream(
                method,
                url.copy_with(host=address),
                headers={
                    **headers,
                    "Host": url.netloc.decode("ascii"),
                    "Accept-Encoding": "identity",
                },
                content=content,
                extensions={"sni_hostname": host},
            ) as response,
        ):
            location = response.headers.get("location")
            if response.status_code in _REDIRECTS and location:
                return _Answer(response.status_code, location, "", b"")
            encoding = response.headers.get("content-encoding", "identity").strip().lower()
            if encoding not in ("", "identity"):
                raise PermanentFailure(
                    f"{host} sent a {encoding!r}-encoded response although asked for identity"
                )
            data = bytearray()
            async for chunk in response.aiter_raw():
                data += chunk
                if len(data) > policy.max_response_bytes:
                    raise PermanentFailure(
                        f"response from {host} exceeds {policy.max_response_bytes} bytes"
                    )
            content_type = response.headers.get("content-type", "")
            return _Answer(response.status_code, None, content_type, bytes(data))
    except httpx.TransportError as exc:
        raise WebhookError(f"{host}: {type(exc).__name__}: {exc}") from None


async def _follow(
    payload: WebhookPayload, policy: WebhookPolicy, tls: ssl.SSLContext, resolve: Resolve
) -> tuple[httpx.URL, _Answer]:
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
