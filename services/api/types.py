"""Job types the API knows (``GET /v1/types``), and the strict submit rules built on them
(``JOBQ_STRICT_TYPES``): a type no worker serves, or a payload its schema refuses, is ``422``;
the type's defaults fill what the submitter left out."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import jsonschema_rs
import msgspec
from litestar.exceptions import ValidationException

from shared.db.types import CLUSTER, Described, JobType, TypeStore

#: How long a process trusts what it read of ``job_types``.
CACHE_SECONDS = 2.0


class TypeCatalog:
    """``job_types`` as this process last read it, with a compiled validator per schema."""

    def __init__(self, types: TypeStore, grace_seconds: float) -> None:
        self.types = types
        self.grace_seconds = grace_seconds
        self._read_at = float("-inf")
        #: (tenant, name) -> type; tenant ``CLUSTER`` for jobq's own workers' types.
        self._known: dict[tuple[str, str], JobType] = {}
        self._validators: dict[tuple[str, str], tuple[str, _Validator]] = {}

    async def seen_by(self, tenant: str) -> list[JobType]:
        """The types ``tenant`` may submit: its HTTP workers' own, and the cluster-wide ones
        whose names those do not take."""
        if time.monotonic() - self._read_at > CACHE_SECONDS:
            self._known = {(t.tenant, t.name): t for t in await self.types.all(self.grace_seconds)}
            self._read_at = time.monotonic()
        seen = {t.name: t for (owner, _), t in self._known.items() if owner == CLUSTER}
        seen |= {t.name: t for (owner, _), t in self._known.items() if owner == tenant != CLUSTER}
        return sorted(seen.values(), key=lambda t: t.name)

    async def check(self, tenant: str, type_name: str, payload: Any) -> dict[str, Any]:
        """The type's defaults; ``422`` if no worker serves it for ``tenant`` or its schema
        refuses the payload (naming where)."""
        seen = {t.name: t for t in await self.seen_by(tenant)}
        known = seen.get(type_name)
        if known is None or not known.served:
            served = sorted(t.name for t in seen.values() if t.served)
            raise invalid(
                "type",
                f"no worker serves job type {type_name!r} (served: {', '.join(served) or 'none'})",
            )
        problem = self._validator(known).first_error(payload)
        if problem is not None:
            raise invalid("payload", f"payload does not fit {type_name}: {problem}")
        return known.defaults

    async def register(self, tenant: str, types: Sequence[Described]) -> list[JobType]:
        """An HTTP worker's types, for ``tenant`` alone; this process sees them at once."""
        written = await self.types.register(types, tenant)
        self._read_at = float("-inf")
        return written

    def _validator(self, known: JobType) -> _Validator:
        text = msgspec.json.encode(known.schema).decode()
        key = (known.tenant, known.name)
        cached = self._validators.get(key)
        if cached is None or cached[0] != text:
            cached = (text, _Validator(known.schema))
            self._validators[key] = cached
        return cached[1]


class _Validator:
    def __init__(self, schema: dict[str, Any]) -> None:
        self._v = compile_schema(schema) if schema else None

    def first_error(self, payload: Any) -> str | None:
        if self._v is None:
            return None
        for error in self._v.iter_errors(payload):
            where = "/".join(str(p) for p in error.instance_path)
            return f"{where or '(the payload)'}: {error.message}"
        return None


def compile_schema(schema: dict[str, Any]) -> Any:
    """A validator for ``schema``; ``ValueError`` if it is not a valid JSON Schema. Never
    fetches a ``$ref`` (a tenant's schema could name any address): only local ones resolve."""
    try:
        return jsonschema_rs.validator_for(schema, offline=True)
    except (jsonschema_rs.ValidationError, ValueError) as exc:
        raise ValueError(str(exc).split("\n", 1)[0]) from None


def invalid(key: str, message: str) -> ValidationException:
    return ValidationException(
        detail=message, extra=[{"message": message, "key": key, "source": "body"}]
    )
