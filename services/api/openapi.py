"""The error answers each route declares in the OpenAPI document, as problem+json."""

from __future__ import annotations

from http import HTTPStatus

from litestar.openapi import ResponseSpec

from services.api.errors import PROBLEM
from services.api.schemas import Problem

WHY = {
    400: "Malformed JSON or form body, or a key repeated in a JSON object",
    401: "Missing, invalid, expired or revoked token",
    403: "The token lacks a scope this operation needs",
    404: "No such object in the caller's tenant",
    409: "The object's state does not allow this",
    413: "Request body or job payload too large",
    415: "The request body is not sent as `application/json`",
    422: "A field is missing, of the wrong type or out of range; `errors` names it",
    429: "Rate limited: retry after `Retry-After` seconds",
    503: "PostgreSQL or RabbitMQ is unreachable: retry after `Retry-After` seconds",
}


def problems(*codes: int) -> dict[int, ResponseSpec]:
    """Response specs for ``codes``, and 400: any request can be malformed."""
    wanted = {*codes, 400}
    return {
        code: ResponseSpec(
            data_container=Problem,
            media_type=PROBLEM,
            description=WHY.get(code, HTTPStatus(code).phrase),
            generate_examples=False,
        )
        for code in sorted(wanted)
    }
