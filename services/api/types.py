"""Job types the API knows (``GET /v1/types``), and the strict submit rules built on them
(``JOBQ_STRICT_TYPES``): a type no worker serves, or a payload its schema refuses, is ``422``;
the type's defaults fill what the submitter left out."""

from __future__ import annotations

import time
from typing import Any

import jsonschema_rs
import msgspec
from litestar.exceptions import ValidationException

from shared.db.types import JobType, TypeStore

#: How long a process trusts what it read of ``job_types``.
CACHE_SECONDS = 2.0


class TypeCatalog:
    """``job_types`` as this process last read it, with a compiled validator per schema."""

    def __init__(self, types: TypeStore, grace_seconds: float) -> None:
        self.types = types
        self.grace_seconds = grace_seconds
        self._read_at = float("-inf")
        self._known: dict[str, JobType] = {}
        self._validators: dict[str, tuple[str, Any]] = {}

    async def all(self) -> list[JobType]:
        if time.monotonic() - self._read_at > CACHE_SECONDS:
            self._known = {t.name: t for t in await self.types.all(self.grace_seconds)}
            self._read_at = time.monotonic()
        return list(self._known.values())

    async def check(self, type_name: str, payload: Any) -> dict[str, Any]:
        """The type's defaults; ``422`` if no worker serves it or its schema refuses the
        payload (naming where)."""
        await self.all()
        known = self._known.get(type_name)
        if known is None or not known.served:
            served = sorted(t.name for t in self._known.values() if t.served)
            raise _invalid(
                "type",
                f"no worker serves job type {type_name!r} (served: {', '.join(served) or 'none'})",
            )
        problem = self._validator(known).first_error(payload)
        if problem is not None:
            raise _invalid("payload", f"payload does not fit {type_name}: {problem}")
        return known.defaults

    def _validator(self, known: JobType) -> _Validator:
        text = msgspec.json.encode(known.schema).decode()
        cached = self._validators.get(known.name)
        if cached is None or cached[0] != text:
            cached = (text, _Validator(known.schema))
            self._validators[known.name] = cached
        validator: _Validator = cached[1]
        return validator


class _Validator:
    def __init__(self, schema: dict[str, Any]) -> None:
        self._v = jsonschema_rs.validator_for(schema) if schema else None

    def first_error(self, payload: Any) -> str | None:
        if self._v is None:
            return None
        for error in self._v.iter_errors(payload):
            where = "/".join(str(p) for p in error.instance_path)
            return f"{where or '(the payload)'}: {error.message}"
        return None


def _invalid(key: str, message: str) -> ValidationException:
    return ValidationException(
        detail=message, extra=[{"message": message, "key": key, "source": "body"}]
    )
