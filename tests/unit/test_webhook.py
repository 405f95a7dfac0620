"""The webhook handler's SSRF policy, without network: which destinations it refuses and why."""

from __future__ import annotations

import uuid
from ipaddress import ip_network
from typing import Any

import pytest
from jobq.handlers import Handler, JobContext, PermanentError

from services.worker.registry import Registry
from services.worker.webhook import (
    RefusedDestination,
    WebhookPolicy,
    check_headers,
    destination,
    parse_target,
    redirected_method,
    refusal,
    resolve_host,
    webhook_handler,
)
from shared.config import Settings
from shared.errors import ConfigError, InvalidPayload

DEFAULT = WebhookPolicy()


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("127.9.9.9", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("172.31.255.255", "private"),
        ("192.168.1.1", "private"),
        ("fc00::1", "private"),
        ("169.254.169.254", "cloud metadata"),
        ("fd00:ec2::254", "cloud metadata"),
        ("100.100.100.200", "cloud metadata"),
        ("168.63.129.16", "cloud metadata"),
        ("192.0.0.192", "cloud metadata"),
        ("192.0.0.9", "special-purpose"),
        ("fec0::1", "special-purpose"),
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("fe80::1%1", "link-local"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:169.254.169.254", "cloud metadata"),
        ("64:ff9b::a00:1", "private"),  # NAT64 of 10.0.0.1
        ("2002:7f00:1::", "loopback"),  # 6to4 of 127.0.0.1
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("100.64.0.1", "shared (CGNAT)"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("198.18.0.1", "private"),
        ("2001:db8::1", "private"),
    ],
)
def test_non_public_addresses_are_refused_naming_their_class(address: str, kind: str) -> None:
    assert refusal(address, address, DEFAULT) == f"refused destination {address}: {kind} address"


def test_the_refusal_names_the_host_and_its_address() -> None:
    reason = refusal("db.internal", "10.0.0.5", DEFAULT)
    assert reason == "refused destination db.internal (10.0.0.5): private address"


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "64:ff9b::808:808", "::ffff:8.8.8.8"]
)
def test_public_addresses_are_allowed(address: str) -> None:
    assert refusal("hooks.example.com", address, DEFAULT) is None


def test_the_allow_list_permits_networks_and_host_names() -> None:
    policy = WebhookPolicy.from_settings(
        Settings(webhook_allow=" 10.1.0.0/16, Hooks.Internal., 127.0.0.2,fd12::/16")
    )
    assert refusal("anything", "10.1.2.3", policy) is None
    assert refusal("anything", "::ffff:10.1.2.3", policy) is None
    assert refusal("anything", "127.0.0.2", policy) is None
    assert refusal("anything", "fd12::7", policy) is None
    assert refusal("hooks.internal", "192.168.7.7", policy) is None
    assert refusal("HOOKS.internal.", "127.0.0.1", policy) is None
    # Only what is listed.
    assert refusal("anything", "10.2.0.1", policy) is not None
    assert refusal("anything", "127.0.0.1", policy) is not None
    assert refusal("other.internal", "192.168.7.7", policy) is not None
    assert refusal("sub.hooks.internal", "192.168.7.7", policy) is not None


def test_the_policy_takes_its_limits_from_the_settings() -> None:
    settings = Settings.from_env(
        {
            "JOBQ_WEBHOOK_TIMEOUT_SECONDS": "2.5",
            "JOBQ_WEBHOOK_MAX_RESPONSE_BYTES": "100",
            "JOBQ_WEBHOOK_MAX_REDIRECTS": "0",
        }
    )
    assert WebhookPolicy.from_settings(settings) == WebhookPolicy(
        timeout_seconds=2.5, max_response_bytes=100, max_redirects=0
    )
    assert WebhookPolicy.from_settings(Settings()) == DEFAULT


@pytest.mark.parametrize(
    "overrides",
    [
        {"webhook_allow": "10.0.0.0/33"},
        {"webhook_allow": "10.0.0.1/8/2"},
        {"webhook_allow": "fe80::1::2"},
        {"webhook_allow": "*.example.com"},
        {"webhook_allow": "https://hooks.example.com"},
        {"webhook_timeout_seconds": 0.0},
        {"webhook_max_response_bytes": 0},
        {"webhook_max_redirects": -1},
    ],
)
def test_bad_webhook_settings_are_config_errors(overrides: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="JOBQ_WEBHOOK_"):
        WebhookPolicy.from_settings(Settings(**overrides))


@pytest.mark.parametrize(
    "url",
    ["file:///etc/passwd", "ftp://example.com/", "gopher://example.com:70/_", "dict://x:11211/"],
)
def test_only_http_and_https_are_allowed(url: str) -> None:
    with pytest.raises(RefusedDestination, match="only http and https"):
        parse_target(url)


@pytest.mark.parametrize("url", ["http:///path", "http://", "https://exa mple.com/", "not a url"])
def test_urls_without_a_usable_host_are_invalid(url: str) -> None:
    with pytest.raises(PermanentError):
        parse_target(url)


async def check(url: str, policy: WebhookPolicy = DEFAULT) -> str:
    """The address the handler would connect to for ``url``, by the system resolver."""
    return await destination(parse_target(url), policy, resolve_host)


async def test_userinfo_does_not_hide_the_real_host() -> None:
    url = "http://example.com@127.0.0.1/"
    assert parse_target(url).raw_host == b"127.0.0.1"
    with pytest.raises(RefusedDestination, match=r"127\.0\.0\.1: loopback"):
        await check(url)


@pytest.mark.parametrize(
    "url",
    [
        "http://2130706433/",
        "http://0x7f.1/",
        "http://0x7f000001/",
        "http://017700000001/",
        "http://127.1/",
        "http://localhost:5432/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]:8080/",
        "https://[::ffff:7f00:1]/",
    ],
)
async def test_other_spellings_of_loopback_are_refused(url: str) -> None:
    """The resolver reads ``2130706433`` or ``0x7f.1`` as 127.0.0.1; its answer is checked."""
    with pytest.raises(RefusedDestination, match="loopback address"):
        await check(url)


@pytest.mark.parametrize("url", ["http://0177.0.0.1/", "http://010.0.0.1/", "http://127.0.0.01/"])
async def test_leading_zero_dotted_forms_are_invalid(url: str) -> None:
    """httpx refuses them outright (the resolver would read them as octal)."""
    with pytest.raises(InvalidPayload, match="invalid webhook URL"):
        await check(url)


async def test_an_allowed_private_address_is_the_one_returned() -> None:
    policy = WebhookPolicy(allow_networks=(ip_network("127.0.0.0/8"),))
    assert await check("http://2130706433:8080/x", policy) == "127.0.0.1"


@pytest.mark.parametrize(
    "headers",
    [
        {"Host": "internal"},
        {"host": "internal"},
        {"Content-Length": "0"},
        {"Transfer-Encoding": "chunked"},
        {"Connection": "close"},
        {"Upgrade": "h2c"},
        {"Proxy-Authorization": "Basic x"},
        {"X-A": "b\r\nHost: internal"},
        {"X-A": "b\nc"},
        {"X-A": "b\x00"},
        {"Bad Name": "x"},
        {"X-A:": "x"},
        {"": "x"},
    ],
)
def test_hop_by_hop_host_and_malformed_headers_are_invalid(headers: dict[str, str]) -> None:
    with pytest.raises(InvalidPayload):
        check_headers(headers)


def test_ordinary_headers_pass() -> None:
    check_headers({"Authorization": "Bearer t", "X-Signature": "sha256=ab", "Content-Type": "a/b"})


@pytest.mark.parametrize(
    ("status", "method", "expected"),
    [
        (301, "POST", "GET"),
        (302, "POST", "GET"),
        (303, "PUT", "GET"),
        (303, "DELETE", "GET"),
        (302, "PUT", "PUT"),
        (307, "POST", "POST"),
        (308, "PATCH", "PATCH"),
    ],
)
def test_redirects_change_the_method_as_browsers_do(
    status: int, method: str, expected: str
) -> None:
    assert redirected_method(status, method) == expected


async def test_the_registry_takes_the_bound_handler_and_checks_its_payload() -> None:
    registry = Registry([Handler.of(webhook_handler(DEFAULT), "webhook")])
    handler = registry.get("webhook")
    assert not handler.wants_context
    ctx = JobContext(uuid.uuid4(), "t", "webhook", 1, 3, uuid.uuid4())
    for payload in (
        {"url": "http://x/", "verb": "POST"},
        {"url": "http://x/", "method": "TRACE"},
        {"url": "http://x/", "headers": {"a": 1}},
        {},
    ):
        with pytest.raises(InvalidPayload):
            await handler(payload, ctx)
    with pytest.raises(RefusedDestination, match="loopback"):
        await handler({"url": "http://127.0.0.1:1/", "body": None}, ctx)


def test_credentials_in_a_bad_url_stay_out_of_the_error() -> None:
    with pytest.raises(InvalidPayload) as refused:
        parse_target("http://user:hunter2@exa mple.com/")
    assert "hunter2" not in str(refused.value)
