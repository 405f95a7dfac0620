"""Keyset cursors: the sort key of a page's last job, as opaque URL-safe text.

``GET /v1/jobs`` pages on the job's id (UUIDv7: time-ordered), ``GET /v1/dead`` on when the
job died and its id. A cursor this API did not hand out is a ``422``, never a 500.
"""

from __future__ import annotations

import base64
import binascii
import struct
import uuid
from datetime import UTC, datetime, timedelta

from litestar.exceptions import ValidationException

#: The query pattern of each kind of cursor: 16 bytes (an id), 24 (an instant and an id).
JOB_CURSOR = r"^[A-Za-z0-9_-]{22}$"
DEAD_CURSOR = r"^[A-Za-z0-9_-]{32}$"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode(cursor: str, size: int) -> bytes:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except (ValueError, binascii.Error):
        raw = b""
    if len(raw) != size:
        raise ValidationException(detail="cursor is not one this API returned")
    return raw


def job_cursor(job_id: uuid.UUID) -> str:
    return _encode(job_id.bytes)


def parse_job_cursor(cursor: str) -> uuid.UUID:
    return uuid.UUID(bytes=_decode(cursor, 16))


def dead_cursor(finished_at: datetime, job_id: uuid.UUID) -> str:
    micros = (finished_at - EPOCH) // timedelta(microseconds=1)
    return _encode(struct.pack(">q", micros) + job_id.bytes)


def parse_dead_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    raw = _decode(cursor, 24)
    (micros,) = struct.unpack(">q", raw[:8])
    try:
        instant = EPOCH + timedelta(microseconds=micros)
    except OverflowError:
        raise ValidationException(detail="cursor is not one this API returned") from None
    return instant, uuid.UUID(bytes=raw[8:])
