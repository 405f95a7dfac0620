"""The instants the API accepts: 1970-01-01 to 9999-12-31 in UTC, with an explicit offset.

An RFC 3339 time may carry any offset up to ±23:59, so ``0001-01-01T00:00:00+23:59`` and
``9999-12-31T23:59:59-23:59`` are well-formed yet fall outside what Python's ``datetime`` can
hold in UTC (converting them raises ``OverflowError``, which used to surface as a 500 when the
value reached the database). Every instant a request carries, in a body or a query string, is
checked here, after applying its offset.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from typing import Any, cast

import msgspec
import msgspec.inspect as mi
from litestar.exceptions import ValidationException

EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)


def bounded(name: str, value: datetime, source: str = "body") -> datetime:
    """``value`` in UTC, or ``ValidationException`` (422) naming ``name``."""
    if value.tzinfo is None:
        raise _invalid(name, "needs a UTC offset (RFC 3339), e.g. 2030-01-01T00:00:00Z", source)
    try:
        utc = value.astimezone(UTC)
    except OverflowError:
        utc = None
    if utc is None or not EARLIEST <= utc <= LATEST:
        raise _invalid(name, "must lie between 1970-01-01 and 9999-12-31 in UTC", source)
    return utc


def parse_query(name: str, value: str | None) -> datetime | None:
    """An RFC 3339 date-time from a query string (UTC if it names no offset), bounded.

    Query strings are parsed leniently by default, which would take a bare number for a Unix
    time; ``datetime.fromisoformat`` takes only ISO 8601 text.
    """
    if value is None:
        return None
    try:
        instant = datetime.fromisoformat(value)
    except ValueError:
        raise _invalid(name, "must be an RFC 3339 date-time", "query") from None
    return bounded(name, instant if instant.tzinfo else instant.replace(tzinfo=UTC), "query")


def check_body(value: Any, where: str = "") -> None:
    """Bound every instant of a decoded body and store it in UTC (so one instant is one value,
    whatever offset spelled it): the instant fields of its structs, and of the structs in
    their lists (a batch). Which fields those are is worked out once per type."""
    if not isinstance(value, msgspec.Struct):
        return
    instants, nested, inner = _fields(type(value))
    for name in instants:
        instant = getattr(value, name)
        if instant is not None:
            setattr(value, name, bounded(f"{where}{name}", instant))
    for name in nested:
        for i, item in enumerate(getattr(value, name) or ()):
            check_body(item, f"{where}{name}[{i}].")
    for name in inner:
        check_body(getattr(value, name), f"{where}{name}.")


@functools.cache
def _fields(
    cls: type[msgspec.Struct],
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """A struct type's fields holding instants, those holding lists of structs, and those
    holding a struct (a dead-letter filter)."""
    instants, nested, inner = [], [], []
    for field in cast(mi.StructType, mi.type_info(cls)).fields:
        kinds = field.type.types if isinstance(field.type, mi.UnionType) else (field.type,)
        if any(isinstance(kind, mi.DateTimeType) for kind in kinds):
            instants.append(field.name)
        elif any(
            isinstance(kind, mi.ListType) and isinstance(kind.item_type, mi.StructType)
            for kind in kinds
        ):
            nested.append(field.name)
        elif any(isinstance(kind, mi.StructType) for kind in kinds):
            inner.append(field.name)
    return tuple(instants), tuple(nested), tuple(inner)


def _invalid(name: str, why: str, source: str) -> ValidationException:
    return ValidationException(
        detail=f"{name} {why}", extra=[{"message": why, "key": name, "source": source}]
    )
