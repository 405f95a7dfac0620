"""Every error as ``application/problem+json`` (RFC 9457), mapped in one place."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from litestar import Response
from litestar.exceptions import HTTPException, ValidationException

from services.api.limits import TooManyRequests
from shared.db.errors import is_transient
from shared.errors import (
    DependencyUnavailable,
    IdempotencyKeyReused,
    InvalidDependencies,
    QueueInUse,
    UndeclaredQueue,
)

if TYPE_CHECKING:
    from litestar import Request
    from litestar.types import ExceptionHandlersMap

log = logging.getLogger("jobq.api")
PROBLEM = "application/problem+json"


class Conflict(HTTPException):
    """The object's state does not allow this request."""

    status_code = 409


def problem(
    status: int, detail: str, headers: dict[str, str] | None = None, **extra: Any
) -> Response[dict[str, Any]]:
    body = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        **extra,
    }
    return Response(body, status_code=status, media_type=PROBLEM, headers=headers)


def _http(request: Request[Any, Any, Any], exc: HTTPException) -> Response[dict[str, Any]]:
    if exc.status_code >= 500:  # raised by the framework: never answered silently
        log.error("server error", exc_info=exc, extra={"path": request.url.path})
    headers = dict(exc.headers or {})
    # An OAuth2 ``error`` code (RFC 6749 §5.2) travels as ``extra={"error": ...}``.
    extra = exc.extra if isinstance(exc.extra, dict) else {}
    oauth = {"error": extra["error"]} if "error" in extra else {}
    if isinstance(exc, ValidationException):
        # Schema violations are 422 naming the field. Litestar's own detail repeats the URL,
        # query string included (which may hold anything): it is replaced, ``errors`` says more.
        errors = exc.extra if isinstance(exc.extra, list) else []
        detail = exc.detail
        if detail.startswith("Validation failed for"):
            detail = "the request does not match the API; see errors"
        return problem(422, detail, headers, errors=errors, **oauth)
    return problem(exc.status_code, exc.detail, headers, **oauth)


def _undeclared(request: Request[Any, Any, Any], exc: UndeclaredQueue) -> Response[dict[str, Any]]:
    why = f"{exc}: an admin declares queues (POST /v1/admin/queues, or JOBQ_QUEUES)"
    return problem(422, why, errors=[{"message": why, "key": "queue", "source": "body"}])


def _key_reused(
    request: Request[Any, Any, Any], exc: IdempotencyKeyReused
) -> Response[dict[str, Any]]:
    return problem(
        422,
        f"{exc}: use a new key for a new request",
        errors=[{"message": str(exc), "key": "Idempotency-Key", "source": "header"}],
    )


def _dependencies(
    request: Request[Any, Any, Any], exc: InvalidDependencies
) -> Response[dict[str, Any]]:
    return problem(422, str(exc), errors=[{"message": str(exc), "key": exc.key, "source": "body"}])


def _in_use(request: Request[Any, Any, Any], exc: QueueInUse) -> Response[dict[str, Any]]:
    return problem(409, str(exc))


def _too_many(request: Request[Any, Any, Any], exc: TooManyRequests) -> Response[dict[str, Any]]:
    oauth = {"error": exc.error} if exc.error else {}
    return problem(429, exc.detail, headers={"Retry-After": str(exc.retry_after)}, **oauth)


def _unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    if isinstance(exc, DependencyUnavailable) or is_transient(exc):
        log.warning("dependency unavailable", extra={"path": request.url.path, "error": repr(exc)})
        return problem(
            503, "a dependency is unavailable; try again shortly", headers={"Retry-After": "2"}
        )
    log.exception("unhandled error", extra={"path": request.url.path})
    return problem(500, "internal error")


EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    HTTPException: _http,
    TooManyRequests: _too_many,
    UndeclaredQueue: _undeclared,
    QueueInUse: _in_use,
    IdempotencyKeyReused: _key_reused,
    InvalidDependencies: _dependencies,
    Exception: _unexpected,
}
