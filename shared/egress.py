"""Requests jobq sends to addresses it was given (the ``webhook`` handler, result callbacks):
public destinations only, unless the operator's allow-list (``JOBQ_WEBHOOK_ALLOW``) says so.

So that a job cannot turn jobq into a proxy into its own network (SSRF), a destination is
resolved once, refused if any of its addresses is not public, and connected to at the very
address that was checked, so a DNS answer that changes in between (rebinding) cannot redirect
it. Pure checks first, then the I/O.
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from typing import Protocol

import httpx

from shared.config import csv_list
from shared.errors import ConfigError, PermanentFailure

IPAddress = IPv4Address | IPv6Address
Network = IPv4Network | IPv6Network
#: Resolves a host name to addresses; a parameter so tests can play DNS.
Resolve = Callable[[str], Awaitable[list[str]]]

#: What a host looks like once httpx has parsed it (IDNA, lower case; IPv6 without brackets).
HOST = re.compile(r"[a-z0-9._:-]+")
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


class AllowList(Protocol):
    """The non-public destinations an operator allows: host names (whatever they resolve to)
    and networks (whatever the name)."""

    @property
    def allow_hosts(self) -> frozenset[str]: ...
    @property
    def allow_networks(self) -> tuple[Network, ...]: ...


class RefusedDestination(PermanentFailure):
    """The destination is not allowed."""


class EgressError(Exception):
    """A request failed in a way that may pass later: DNS, connect, the network."""


def parse_allow(
    value: str, setting: str = "JOBQ_WEBHOOK_ALLOW"
) -> tuple[frozenset[str], tuple[Network, ...]]:
    """The host names and networks of an allow-list setting (comma-separated)."""
    hosts, networks = set(), []
    for entry in csv_list(value):
        try:
            networks.append(ip_network(entry, strict=False))
        except ValueError:
            name = entry.lower().rstrip(".")
            if ":" in name or not HOST.fullmatch(name):
                raise ConfigError(
                    f"{setting}: {entry!r} is neither a host name nor a CIDR"
                ) from None
            hosts.add(name)
    return frozenset(hosts), tuple(networks)


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


def refusal(host: str, address: str, allowed: AllowList) -> str | None:
    """Why connecting to ``address``, an answer for ``host``, is refused; ``None`` if it is not."""
    ip = _unwrap(ip_address(address))
    if host.lower().rstrip(".") in allowed.allow_hosts:
        return None
    if any(ip in network for network in allowed.allow_networks):
        return None
    kind = address_class(ip)
    if kind is None:
        return None
    named = address if host == address else f"{host} ({address})"
    return f"refused destination {named}: {kind} address"


def literal_refusal(host: str, allowed: AllowList) -> str | None:
    """Why a host that needs no DNS is refused (an address literal, ``localhost``); ``None``
    for anything else: a name is judged by its answers when the request is sent."""
    name = host.rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        host_as = "127.0.0.1"
    else:
        try:
            host_as = str(ip_address(host))
        except ValueError:
            return None
    return refusal(host, host_as, allowed)


# -- I/O ------------------------------------------------------------------------------------


async def resolve_host(host: str) -> list[str]:
    """The system resolver's answers, which also turn ``2130706433`` or ``0x7f.1`` into
    ``127.0.0.1``: checking its answers, not the spelling, catches every form."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


async def destination(url: httpx.URL, allowed: AllowList, resolve: Resolve) -> str:
    """The address to connect to for ``url``: every answer is checked, the first is used."""
    host = url.raw_host.decode("ascii")
    try:
        addresses = await resolve(host)
    except OSError as exc:
        raise EgressError(f"cannot resolve {host}: {exc}") from None
    for address in addresses:
        if reason := refusal(host, address, allowed):
            raise RefusedDestination(reason)
    return addresses[0]


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    #: A redirect's ``Location`` (its body is not read).
    location: str | None
    content_type: str
    content_encoding: str
    #: The body, at most ``limit + 1`` bytes: more than ``limit`` means it was longer.
    data: bytes


async def exchange(
    url: httpx.URL,
    address: str,
    method: str,
    headers: dict[str, str],
    content: bytes | None,
    tls: ssl.SSLContext,
    limit: int,
) -> Answer:
    """One request to ``url``, sent to the checked ``address``; reads at most ``limit + 1``
    bytes of the body, raw (asked for uncompressed), and never follows a redirect.

    The request URL carries the address instead of the name, so httpx connects there and does
    not resolve again; the Host header and the TLS ``sni_hostname`` carry the name, and TLS
    verifies the certificate against that name. A fresh client per request: a pooled
    connection, keyed by address, must not serve a request for another name. No environment
    (proxies, .netrc): the allow-list is the whole configuration."""
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
            if response.is_redirect and location:
                return Answer(response.status_code, location, "", "", b"")
            data = bytearray()
            async for chunk in response.aiter_raw():
                data += chunk
                if len(data) > limit:
                    break
            return Answer(
                response.status_code,
                None,
                response.headers.get("content-type", ""),
                response.headers.get("content-encoding", "identity").strip().lower(),
                bytes(data[: limit + 1]),
            )
    except httpx.TransportError as exc:
        raise EgressError(f"{host}: {type(exc).__name__}: {exc}") from None
