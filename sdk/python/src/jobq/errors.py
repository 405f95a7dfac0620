"""One exception hierarchy, built from the API's problem+json answers."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from jobq.models import Problem

if TYPE_CHECKING:
    from jobq.models import Job


class JobqError(Exception):
    """Anything the API refused or could not do; ``status`` is the HTTP status (0: no answer)."""

    def __init__(self, detail: str, status: int = 0, problem: Problem | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status
        self.problem = problem


class InvalidJob(JobqError):
    """The request broke a rule (400, 413, 415, 422); ``field`` names the first part at fault."""

    def __init__(
        self,
        detail: str,
        status: int = 422,
        problem: Problem | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(detail, status, problem)
        self.field = field


class Unauthorized(JobqError):
    """401: bad credentials, or a token that expired or was revoked."""


class Forbidden(JobqError):
    """403: the client lacks the scope this call needs."""


class NotFound(JobqError):
    """404: no such job for this client's tenant."""


class Conflict(JobqError):
    """409: the job is not in a state that allows this (cancel a finished job, retry a live one)."""


class RetryAfter(JobqError):
    """A refusal to try again later: ``retry_after`` seconds, as the server asked."""

    def __init__(
        self, detail: str, status: int, problem: Problem | None = None, retry_after: float = 1.0
    ) -> None:
        super().__init__(detail, status, problem)
        self.retry_after = retry_after


class RateLimited(RetryAfter):
    """429: over the client's or tenant's rate, or too many long-polls."""


class Unavailable(RetryAfter):
    """503, or no answer at all: the API, PostgreSQL or RabbitMQ is unreachable for now."""


class ServerError(JobqError):
    """Another 5xx: a bug on the server side (its logs say more)."""


class WaitTimeout(JobqError, TimeoutError):
    """``wait`` ran out of time; ``job`` is the job as last seen."""

    def __init__(self, job: Job) -> None:
        super().__init__(f"job {job.id} is still {job.status}")
        self.job = job


_problem = msgspec.json.Decoder(Problem)


def error_from(status: int, body: bytes, retry_after: str | None) -> JobqError:
    """The exception for a non-2xx answer."""
    try:
        problem: Problem | None = _problem.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        problem = None
    detail = (problem.detail or problem.title) if problem else ""
    detail = detail or body[:200].decode(errors="replace") or f"HTTP {status}"
    if status in (429, 503):
        kind = RateLimited if status == 429 else Unavailable
        return kind(detail, status, problem, _seconds(retry_after))
    if status in (400, 413, 415, 422):
        field = problem.errors[0].get("key") if problem and problem.errors else None
        return InvalidJob(detail, status, problem, field)
    kinds: dict[int, type[JobqError]] = {
        401: Unauthorized,
        403: Forbidden,
        404: NotFound,
        409: Conflict,
    }
    if status in kinds:
        return kinds[status](detail, status, problem)
    return (ServerError if status >= 500 else JobqError)(detail, status, problem)


def _seconds(retry_after: str | None) -> float:
    try:
        return max(0.0, float(retry_after)) if retry_after else 1.0
    except ValueError:  # an HTTP date: not what jobq sends; wait a second
        return 1.0
