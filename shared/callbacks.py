"""Result callbacks, the pure parts (docs/design.md §10): what a job's ``callback_url`` may be,
how a delivery is signed, and what a failed attempt leads to.

A finished job is POSTed to its ``callback_url`` by the scheduler (``services/scheduler/
callbacks.py``), signed with its client's callback secret: ``X-Jobq-Signature: t=<unix
seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>``, one ``v1`` per secret that signs (the
current one and, for a while after a rotation, the previous one).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx

from shared.domain import JobStatus, backoff
from shared.egress import HOST, AllowList, Network, literal_refusal, parse_allow

if TYPE_CHECKING:
    from shared.config import Settings

#: The longest ``callback_url`` a job may carry.
MAX_URL_LENGTH = 2048
#: How much of a receiver's answer each attempt keeps.
EXCERPT_BYTES = 1024
#: The event each final status sends.
EVENTS = {
    JobStatus.SUCCEEDED: "job.succeeded",
    JobStatus.DEAD: "job.dead",
    JobStatus.CANCELED: "job.canceled",
}
#: A claimed delivery is another replica's to take once its attempt could not still be
#: running: the request's whole budget and this much more.
CLAIM_MARGIN_SECONDS = 30.0
_USERINFO = re.compile(r"^[a-z][a-z0-9+.-]*://[^/?#]*@", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class CallbackPolicy:
    """Where callbacks may go (``JOBQ_WEBHOOK_ALLOW``, as for the ``webhook`` handler) and
    how they are attempted (``JOBQ_CALLBACK_*``)."""

    allow_hosts: frozenset[str] = frozenset()
    allow_networks: tuple[Network, ...] = ()
    timeout_seconds: float = 10.0
    max_attempts: int = 8
    backoff_seconds: float = 5.0
    backoff_max_seconds: float = 3600.0
    concurrency: int = 16

    @classmethod
    def from_settings(cls, settings: Settings) -> CallbackPolicy:
        hosts, networks = allow_list(settings.webhook_allow)
        return cls(
            hosts,
            networks,
            settings.callback_timeout_seconds,
            settings.callback_max_attempts,
            settings.callback_backoff_seconds,
            settings.callback_backoff_max_seconds,
            settings.callback_concurrency,
        )

    @property
    def claim_seconds(self) -> float:
        return self.timeout_seconds + CLAIM_MARGIN_SECONDS


@functools.cache
def allow_list(value: str) -> tuple[frozenset[str], tuple[Network, ...]]:
    """``JOBQ_WEBHOOK_ALLOW`` parsed, once per value (the API checks every submit with it)."""
    return parse_allow(value)


def url_problem(url: str, allowed: AllowList) -> str | None:
    """What is wrong with ``url`` as a callback URL, or ``None``.

    http or https with a host, no credentials in it (they would be stored and shown with the
    job), not an address that is obviously not public. A host name is judged by its DNS
    answers at each delivery (a name can change what it points to): that check is the one
    that counts, this one only refuses early what could never be delivered."""
    if len(url) > MAX_URL_LENGTH:
        return f"callback_url is longer than {MAX_URL_LENGTH} characters"
    if _USERINFO.match(url):
        return "callback_url may not carry credentials (user:password@)"
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        return f"callback_url is not a valid URL: {exc}"
    if parsed.scheme not in ("http", "https"):
        return "callback_url must be http or https"
    host = parsed.raw_host.decode("ascii")
    if not host or not HOST.fullmatch(host):
        return "callback_url has no valid host"
    if reason := literal_refusal(host, allowed):
        return f"callback_url: {reason}"
    return None


def signature(secrets: Sequence[str], timestamp: int, body: bytes) -> str:
    """The ``X-Jobq-Signature`` header: ``t=<timestamp>`` and a ``v1`` per secret."""
    signed = str(timestamp).encode() + b"." + body
    macs = (hmac.new(s.encode(), signed, hashlib.sha256).hexdigest() for s in secrets)
    return ",".join([f"t={timestamp}", *(f"v1={mac}" for mac in macs)])


@dataclass(frozen=True, slots=True)
class Decision:
    """What an attempt leads to: ``delivered``, ``retrying`` after ``delay_seconds``, or
    ``gave_up``."""

    outcome: str
    delay_seconds: float = 0.0


def decide(
    attempt: int,
    policy: CallbackPolicy,
    status_code: int | None,
    permanent: bool = False,
    rand: Callable[[], float] = random.random,
) -> Decision:
    """A 2xx delivers; anything else (another status, no answer) is tried again with backoff
    (full jitter) until ``max_attempts``; a refused destination is given up at once."""
    if status_code is not None and 200 <= status_code < 300:
        return Decision("delivered")
    if permanent or attempt >= policy.max_attempts:
        return Decision("gave_up")
    delay = backoff(attempt, policy.backoff_seconds, policy.backoff_max_seconds, rand)
    return Decision("retrying", delay)
