"""JSON request bodies, read strictly: the media type, duplicate keys and every value's type.

Litestar decodes a body to plain values and then converts them to the route's type with
``strict=False``, which turns ``"priority": "5"`` into ``5``; and JSON parsers keep the last
of duplicate keys, so ``{"type": "a", "type": "b"}`` would mean whatever the parser chose. Here a
body is a JSON document (``415`` otherwise), with no duplicate key anywhere (``400``), decoded in
one strict pass into the type the route declares for ``data`` (``422`` naming the field), its
instants bounded (``services.api.instants``).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any

import msgspec
from litestar import Request
from litestar.exceptions import ClientException, HTTPException, ValidationException

from services.api.instants import check_body

#: ``application/json`` and the structured-syntax ``+json`` types (RFC 6839), any parameters.
JSON_MEDIA = re.compile(r"^application/(?:[\w.+-]+\+)?json\s*(?:;.*)?$", re.IGNORECASE)
_FIELD = re.compile(r" - at `\$\.?(.*)`$")


class UnsupportedMediaType(HTTPException):
    status_code = 415


class DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> None:
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        repeated = next(key for key, n in Counter(keys).items() if n > 1)
        raise DuplicateKey(f"duplicate key {repeated[:100]!r} in a JSON object")


def reject_duplicate_keys(body: bytes) -> None:
    """Raise ``ClientException`` (400) if the body is not JSON or repeats a key in an object.

    The standard library's scanner calls a hook per object with its pairs in order; the hook
    only checks them, so nothing is built.
    """
    try:
        json.loads(body, object_pairs_hook=_unique_keys)
    except DuplicateKey as exc:
        raise ClientException(detail=str(exc)) from None
    except (ValueError, RecursionError):
        raise ClientException(detail="request body is not valid JSON") from None


def decode_strict(body: bytes, target: Any) -> Any:
    """The body as ``target``, with no coercion between JSON types (``"5"`` is not a number)."""
    try:
        return msgspec.json.decode(body, type=target, strict=True)
    except msgspec.ValidationError as exc:
        message = str(exc)
        field = _FIELD.search(message)
        raise ValidationException(
            detail=f"invalid request body: {message}",
            extra=[{"message": message, "key": field.group(1) if field else "", "source": "body"}],
        ) from None
    except msgspec.DecodeError:
        raise ClientException(detail="request body is not valid JSON") from None


class JsonRequest(Request[Any, Any, Any]):
    """A request whose JSON body is checked and decoded as this module says."""

    async def json(self) -> Any:
        media = self.headers.get("content-type", "")
        if not JSON_MEDIA.match(media):
            raise UnsupportedMediaType(detail="the request body must be application/json")
        body = await self.body()
        reject_duplicate_keys(body)
        data = self.route_handler.parsed_fn_signature.parameters.get("data")
        decoded = decode_strict(body, data.annotation if data is not None else Any)
        check_body(decoded)
        return decoded
