"""Result callbacks' pure parts: URL checks at submit, signatures, what an attempt leads to."""

from __future__ import annotations

import hashlib
import hmac
import time
from ipaddress import ip_network

import msgspec
import pytest
from jobq.calls import job_fields

from services.api.schemas import JobIn
from services.api.submission import LATER_FIELDS, request_digest
from shared.callbacks import CallbackPolicy, decide, signature, url_problem
from shared.config import Settings
from shared.errors import ConfigError
from tests.integration.test_callbacks import readme_verifier

GUARDED = CallbackPolicy()
POLICY = CallbackPolicy(max_attempts=3, backoff_seconds=2.0, backoff_max_seconds=5.0)


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/jobq",
        "http://hooks.example.com:8080/a?b=c#d",
        "HTTPS://Hooks.Example.COM/",
        "https://93.184.216.34/",
        "https://[2606:2800:220:1:248:1893:25c8:1946]/",
        # A name is judged by its answers at delivery, not here.
        "https://db.internal/",
    ],
)
def test_public_or_named_destinations_pass_at_submit(url: str) -> None:
    assert url_problem(url, GUARDED) is None


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://127.0.0.1/", "loopback"),
        ("http://10.0.0.8/", "private"),
        ("http://[::1]:8080/", "loopback"),
        ("http://[::ffff:192.168.0.1]/", "private"),
        ("http://[64:ff9b::a9fe:a9fe]/", "cloud metadata"),
        ("http://169.254.169.254/", "cloud metadata"),
        ("http://0.0.0.0/", "unspecified"),
        ("http://localhost/", "loopback"),
        ("http://api.localhost./", "loopback"),
        ("https://alice:secret@hooks.example.com/", "credentials"),
        ("https://alice@hooks.example.com/", "credentials"),
        ("file:///etc/passwd", "http or https"),
        ("javascript:alert(1)", "http or https"),
        ("https:///nohost", "host"),
        ("https://exa mple.com/", "host"),
        ("https://hooks.example.com/" + "x" * 2100, "2048"),
    ],
)
def test_refused_destinations_name_why(url: str, says: str) -> None:
    problem = url_problem(url, GUARDED)
    assert problem is not None
    assert says in problem
    assert "secret" not in problem  # credentials are never echoed


def test_the_allow_list_lets_named_networks_and_hosts_through() -> None:
    allowed = CallbackPolicy(
        allow_hosts=frozenset({"localhost"}), allow_networks=(ip_network("10.1.0.0/16"),)
    )
    assert url_problem("http://10.1.2.3/", allowed) is None
    assert url_problem("http://localhost:9000/", allowed) is None
    assert url_problem("http://10.2.0.1/", allowed) is not None


def test_the_policy_reads_its_settings_and_refuses_bad_ones() -> None:
    policy = CallbackPolicy.from_settings(
        Settings(webhook_allow="hooks.internal,10.0.0.0/8", callback_max_attempts=4)
    )
    assert policy.allow_hosts == frozenset({"hooks.internal"})
    assert policy.allow_networks == (ip_network("10.0.0.0/8"),)
    assert policy.max_attempts == 4
    assert policy.claim_seconds > policy.timeout_seconds
    for name in ("callback_max_attempts", "callback_concurrency", "callback_timeout_seconds"):
        with pytest.raises(ConfigError, match=f"JOBQ_{name.upper()}"):
            Settings.from_env({f"JOBQ_{name.upper()}": "0"})
    with pytest.raises(ConfigError, match="JOBQ_CALLBACK_SECRET_GRACE_SECONDS"):
        Settings.from_env({"JOBQ_CALLBACK_SECRET_GRACE_SECONDS": "-1"})


def test_the_signature_is_hmac_sha256_over_the_timestamp_and_body() -> None:
    body = b'{"id": "x"}'
    header = signature(["s3cret"], 1764813600, body)
    mac = hmac.new(b"s3cret", b"1764813600." + body, hashlib.sha256).hexdigest()
    assert header == f"t=1764813600,v1={mac}"
    both = signature(["new", "old"], 1764813600, body)
    assert both.count(",v1=") == 2
    assert both.startswith(signature(["new"], 1764813600, body))


def test_the_readme_verifier_accepts_a_fresh_signature_and_refuses_the_rest() -> None:
    verify = readme_verifier()
    body = b'{"status": "succeeded"}'
    now = int(time.time())
    assert verify("k", signature(["k"], now, body), body)
    assert verify("old", signature(["new", "old"], now, body), body)  # during a rotation
    assert not verify("k", signature(["k"], now, body), body + b"\n")  # altered body
    assert not verify("k", signature(["k"], now - 301, body), body)  # replayed later
    assert not verify("k", signature(["k"], now + 301, body), body)
    assert not verify("k", signature(["other"], now, body), body)
    forged = signature(["k"], now - 1000, body).replace(f"t={now - 1000}", f"t={now}")
    assert not verify("k", forged, body)  # a fresh timestamp on an old signature
    assert not verify("k", f"t={now},t={now}," + signature(["k"], now, body).split(",")[1], body)
    assert not verify("k", "", body)
    assert not verify("k", f"t=-{now},v1=00", body)


def test_a_2xx_delivers_anything_else_backs_off_then_gives_up() -> None:
    assert decide(1, POLICY, 200).outcome == "delivered"
    assert decide(3, POLICY, 204).outcome == "delivered"  # even on the last attempt
    first = decide(1, POLICY, 500, rand=lambda: 1.0)
    assert (first.outcome, first.delay_seconds) == ("retrying", 2.0)
    assert decide(2, POLICY, None, rand=lambda: 1.0).delay_seconds == 4.0
    assert decide(2, CallbackPolicy(max_attempts=9, backoff_seconds=2.0, backoff_max_seconds=3.0),
                  302, rand=lambda: 1.0).delay_seconds == 3.0  # fmt: skip
    assert decide(3, POLICY, 500).outcome == "gave_up"
    assert decide(1, POLICY, None, permanent=True).outcome == "gave_up"


def test_the_sdk_sends_a_callback_url_only_when_given() -> None:
    assert job_fields("echo", callback_url="https://hooks.example.com/")["callback_url"] == (
        "https://hooks.example.com/"
    )
    assert "callback_url" not in job_fields("echo")


def test_idempotency_digests_of_requests_without_a_callback_are_unchanged() -> None:
    """Keys stored before callbacks existed must match the same request sent again."""
    plain = msgspec.convert({"type": "echo", "payload": {"n": 1}}, JobIn)
    later = {*LATER_FIELDS, "callback_url"}  # left out at their defaults
    before = {f: getattr(plain, f) for f in JobIn.__struct_fields__ if f not in later}
    before["queue"] = "default"
    encoded = msgspec.json.Encoder(order="sorted").encode(before)
    assert request_digest(plain) == hashlib.sha256(encoded).hexdigest()
    hooked = msgspec.structs.replace(plain, callback_url="https://hooks.example.com/")
    assert request_digest(hooked) != request_digest(plain)
