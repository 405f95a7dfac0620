"""The API's calls as data, and the rules both clients follow (no I/O here): what each call
sends, how its answer is decoded, whether it may be sent again, how long to wait before that,
and when a token is due for renewal. ``Client`` and ``AsyncClient`` only move the bytes."""

from __future__ import annotations

import json
import os
import random
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Generic, TypeVar

import msgspec

from jobq.errors import JobqError
from jobq.handlers import Handler
from jobq.models import (
    Batch,
    DeadLetter,
    Heartbeat,
    Job,
    JobPage,
    JobStatus,
    JobType,
    Lease,
    LeaseList,
    Purge,
    Queue,
    QueueList,
    Replay,
    Token,
    TypeList,
)

T = TypeVar("T")

#: The API's largest batch (``JOBQ_MAX_BATCH_JOBS``, 1,000 unless the operator changed it).
BATCH_LIMIT = 1000
#: The longest long-poll the API holds open.
MAX_WAIT_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One request. ``resend``: ``"always"`` when sending it twice does no harm (reads, and
    submits, which carry an idempotency key); ``"unsent"`` when it may go again only if it
    never reached the server (the connection was refused)."""

    method: str
    path: str
    decode: Callable[[bytes], T]
    json: Any = None
    form: Mapping[str, str] | None = None
    params: Mapping[str, str] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    resend: str = "always"
    #: Sent with the client's bearer token (all but the token request itself).
    auth: bool = True


def _decoder(kind: type[T]) -> Callable[[bytes], T]:
    return msgspec.json.Decoder(kind).decode


_job, _page, _batch, _token = _decoder(Job), _decoder(JobPage), _decoder(Batch), _decoder(Token)
_queues, _leases, _beat = _decoder(QueueList), _decoder(LeaseList), _decoder(Heartbeat)
_types = _decoder(TypeList)
_dead, _replay, _purge = _decoder(DeadLetter), _decoder(Replay), _decoder(Purge)
#: ``replay``'s payload when the job keeps its own.
KEEP: Any = msgspec.UNSET


@dataclass(frozen=True, slots=True)
class Credentials:
    """Where the API is and who is calling (client credentials, as ``jobq init`` or the admin
    API hands them out)."""

    url: str
    client_id: str
    client_secret: str = field(repr=False)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], url: str | None = None) -> Credentials:
        """A JSON file with ``client_id`` and ``client_secret`` (and optionally ``url``)."""
        data = json.loads(Path(path).read_text())
        found = url or data.get("url") or os.environ.get("JOBQ_URL")
        if not found:
            raise JobqError(f"{path} names no url: pass url= or set JOBQ_URL")
        return cls(found, data["client_id"], data["client_secret"])

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Credentials:
        """``JOBQ_URL``, ``JOBQ_CLIENT_ID`` and ``JOBQ_CLIENT_SECRET``."""
        missing = [
            k for k in ("JOBQ_URL", "JOBQ_CLIENT_ID", "JOBQ_CLIENT_SECRET") if not env.get(k)
        ]
        if missing:
            raise JobqError(f"set {', '.join(missing)} (or pass credentials)")
        return cls(env["JOBQ_URL"], env["JOBQ_CLIENT_ID"], env["JOBQ_CLIENT_SECRET"])


@dataclass(slots=True)
class TokenCache:
    """The bearer token, renewed a margin before it expires (a tenth of its life, 5 s to 60 s)."""

    value: str | None = None
    renew_at: float = 0.0

    def fresh(self, now: float) -> str | None:
        return self.value if self.value is not None and now < self.renew_at else None

    def store(self, token: Token, now: float) -> str:
        margin = min(60.0, max(5.0, token.expires_in / 10))
        self.value, self.renew_at = token.access_token, now + max(0.0, token.expires_in - margin)
        return token.access_token

    def drop(self) -> None:
        self.value, self.renew_at = None, 0.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Refusals worth another try (429, 503, no answer) are tried again up to ``attempts``
    times in all, waiting what ``Retry-After`` says (at most ``max_delay``), else backing off
    exponentially with jitter."""

    attempts: int = 5
    base_delay: float = 0.25
    max_delay: float = 30.0

    def delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(self.max_delay, retry_after)
        return min(self.max_delay, self.base_delay * 2.0 ** (attempt - 1)) * random.uniform(0.5, 1)


DEFAULT_RETRY = RetryPolicy()


def token(credentials: Credentials) -> Call[Token]:
    """Client credentials for a bearer token (OAuth2 ``client_credentials``)."""
    form = {
        "grant_type": "client_credentials",
        "client_id": credentials.client_id,
        "client_secret": credentials.client_secret,
    }
    return Call("POST", "/v1/auth/token", _token, form=form, auth=False)


def job_fields(
    type: str,
    payload: Any = None,
    *,
    queue: str | None = None,
    priority: int | None = None,
    delay: float | None = None,
    run_at: datetime | None = None,
    max_attempts: int | None = None,
    timeout: int | None = None,
) -> dict[str, Any]:
    """The body of one job; what is left out takes the queue's or the server's default."""
    body: dict[str, Any] = {"type": type, "payload": payload}
    optional = {
        "queue": queue,
        "priority": priority,
        "delay_seconds": delay,
        "run_at": run_at.isoformat() if run_at is not None else None,
        "max_attempts": max_attempts,
        "timeout_seconds": timeout,
    }
    body.update({k: v for k, v in optional.items() if v is not None})
    return body


def new_key() -> str:
    """An idempotency key, so that sending a submit again can never make a second job."""
    return f"sdk-{uuid.uuid4()}"


def submit(fields: dict[str, Any], idempotency_key: str) -> Call[Job]:
    return Call("POST", "/v1/jobs", _job, json=fields, headers={"Idempotency-Key": idempotency_key})


def submit_batch(jobs: list[dict[str, Any]]) -> Call[Batch]:
    """Up to ``BATCH_LIMIT`` jobs, each with its own idempotency key: all or none."""
    return Call("POST", "/v1/jobs/batch", _batch, json={"jobs": jobs})


def chunks(jobs: list[dict[str, Any]], size: int = BATCH_LIMIT) -> list[list[dict[str, Any]]]:
    return [jobs[i : i + size] for i in range(0, len(jobs), size)]


def get(job_id: uuid.UUID | str) -> Call[Job]:
    return Call("GET", f"/v1/jobs/{job_id}", _job)


def page(
    cursor: str | None,
    *,
    status: JobStatus | str | None = None,
    type: str | None = None,
    queue: str | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    page_size: int = 100,
) -> Call[JobPage]:
    filters = {
        "cursor": cursor,
        "status": str(status) if status is not None else None,
        "type": type,
        "queue": queue,
        "created_after": created_after.isoformat() if created_after else None,
        "created_before": created_before.isoformat() if created_before else None,
        "limit": str(page_size),
    }
    return Call("GET", "/v1/jobs", _page, params={k: v for k, v in filters.items() if v})


def cancel(job_id: uuid.UUID | str) -> Call[Job]:
    return Call("POST", f"/v1/jobs/{job_id}/cancel", _job, resend="unsent")


def retry(job_id: uuid.UUID | str) -> Call[Job]:
    return Call("POST", f"/v1/jobs/{job_id}/retry", _job, resend="unsent")


def wait(job_id: uuid.UUID | str, seconds: float) -> Call[Job]:
    """One long-poll of at most ``MAX_WAIT_SECONDS``."""
    timeout = f"{max(0.0, min(seconds, MAX_WAIT_SECONDS)):.3f}"
    return Call("GET", f"/v1/jobs/{job_id}/wait", _job, params={"timeout": timeout})


def queues() -> Call[list[Queue]]:
    """The declared queues, with the caller's jobs in each by status."""
    return Call("GET", "/v1/queues", lambda body: _queues(body).items)


def types() -> Call[list[JobType]]:
    """The job types the caller's tenant may submit."""
    return Call("GET", "/v1/types", lambda body: _types(body).items)


def register_types(handlers: list[Handler]) -> Call[list[JobType]]:
    """HTTP workers: the types they serve, seen now (registering twice does no harm)."""
    body = {"types": [h.described() for h in handlers]}
    return Call("POST", "/v1/types", lambda raw: _types(raw).items, json=body)


def lease(
    queues: list[str],
    types: list[str] | None,
    max_jobs: int,
    wait_seconds: float,
    lease_seconds: float | None,
) -> Call[list[Lease]]:
    """Jobs for an HTTP worker (``[]``: none came within the wait). Not sent again blind: a
    lost answer would leave jobs held until their lease runs out."""
    body: dict[str, Any] = {"queues": queues, "max_jobs": max_jobs, "wait_seconds": wait_seconds}
    if types is not None:
        body["types"] = types
    if lease_seconds is not None:
        body["lease_seconds"] = lease_seconds
    return Call(
        "POST", "/v1/leases", lambda raw: _leases(raw).items if raw else [], json=body,
        resend="unsent",
    )  # fmt: skip


def heartbeat(
    job_id: uuid.UUID | str,
    lease_id: uuid.UUID | str,
    seconds: float | None,
    progress: tuple[float, str] | None = None,
) -> Call[Heartbeat]:
    body: dict[str, Any] = {"lease_id": str(lease_id)}
    if seconds is not None:
        body["lease_seconds"] = seconds
    if progress is not None:
        body["progress"] = {"fraction": progress[0], "message": progress[1]}
    return Call("POST", f"/v1/jobs/{job_id}/heartbeat", _beat, json=body)


def complete(job_id: uuid.UUID | str, lease_id: uuid.UUID | str, result: Any) -> Call[Job]:
    body = {"lease_id": str(lease_id), "result": result}
    return Call("POST", f"/v1/jobs/{job_id}/complete", _job, json=body, resend="unsent")


def fail(
    job_id: uuid.UUID | str,
    lease_id: uuid.UUID | str,
    message: str,
    error_type: str,
    retryable: bool,
) -> Call[Job]:
    body = {
        "lease_id": str(lease_id), "message": message[:2000], "error_type": error_type[:200],
        "retryable": retryable,
    }  # fmt: skip
    return Call("POST", f"/v1/jobs/{job_id}/fail", _job, json=body, resend="unsent")


def _instant(value: datetime | str | None) -> str | None:
    return value.isoformat() if isinstance(value, datetime) else value


def dead_filter(
    *,
    queue: str | None = None,
    type: str | None = None,
    error: str | None = None,
    since: datetime | str | None = None,
    until: datetime | str | None = None,
) -> dict[str, str]:
    """Which dead jobs: by queue, type, error class and when they died."""
    found = {"queue": queue, "type": type, "error": error, "since": _instant(since),
             "until": _instant(until)}  # fmt: skip
    return {k: v for k, v in found.items() if v is not None}


def dead_page(
    cursor: str | None, tenant: str | None = None, page_size: int = 100, **filters: Any
) -> Call[JobPage]:
    params = {**dead_filter(**filters), "limit": str(page_size)}
    params.update({k: v for k, v in (("cursor", cursor), ("tenant", tenant)) if v})
    return Call("GET", "/v1/dead", _page, params=params)


def dead_letter(job_id: uuid.UUID | str, tenant: str | None = None) -> Call[DeadLetter]:
    params = {"tenant": tenant} if tenant else None
    return Call("GET", f"/v1/dead/{job_id}", _dead, params=params)


def replay(body: dict[str, Any], idempotency_key: str) -> Call[Replay]:
    """Replay dead jobs; the key makes sending it again harmless (the first result comes back)."""
    return Call(
        "POST", "/v1/dead/replay", _replay, json=body, headers={"Idempotency-Key": idempotency_key}
    )


def purge(body: dict[str, Any]) -> Call[Purge]:
    """Count (``dry_run``) or delete dead jobs; a real purge is sent again only if unsent."""
    return Call(
        "POST", "/v1/dead/purge", _purge, json=body,
        resend="always" if body.get("dry_run", True) else "unsent",
    )  # fmt: skip
