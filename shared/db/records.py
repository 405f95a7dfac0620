"""A job row as the hot paths read it, straight from asyncpg (``shared.db.raw``).

JSON columns stay JSON text (``msgspec.Raw``): the API writes them into its answer without
decoding them. The submit path and the HTTP workers' writes return their rows this way.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import msgspec


class JobRecord(msgspec.Struct, frozen=True):
    """A job's columns, in ``RECORD_COLUMNS`` order."""

    id: uuid.UUID
    tenant: str
    type: str
    queue: str
    status: str
    payload: msgspec.Raw
    priority: int
    attempts: int
    max_attempts: int
    timeout_seconds: int
    run_at: datetime
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    result: msgspec.Raw | None
    last_error: msgspec.Raw | None
    errors: msgspec.Raw
    idempotency_key: str | None
    cancel_requested: bool
    traceparent: str | None
    request_digest: str | None
    progress: msgspec.Raw | None
    tracestate: str | None
    depends_on: list[uuid.UUID] | None
    waiting_on: int | None
    on_dependency_failure: str | None
    held: bool
    concurrency_key: str | None
    concurrency_limit: int | None
    #: Where the job is POSTed once it finishes (docs/design.md §10).
    callback_url: str | None = None

    @classmethod
    def of(cls, record: Any) -> JobRecord:
        """From a row of ``RECORD_COLUMNS``."""
        values = list(record)
        for i in JSON_FIELDS:
            if values[i] is not None:
                values[i] = msgspec.Raw(values[i].encode())
        return cls(*values)


#: Where ``JobRecord`` holds JSON: payload, result, last_error, errors and progress.
JSON_FIELDS = (5, 15, 16, 17, 22)
#: ``JobRecord``'s fields of the row ``j``, JSON as text.
RECORD_COLUMNS = """j.id, j.tenant, j.type, j.queue, j.status, j.payload::text, j.priority,
    j.attempts, j.max_attempts, j.timeout_seconds, j.run_at, j.created_at, j.updated_at,
    j.started_at, j.finished_at, j.result::text, j.last_error::text, j.errors::text,
    j.idempotency_key, j.cancel_requested, j.traceparent, j.request_digest, j.progress::text,
    j.tracestate, j.depends_on, j.waiting_on, j.on_dependency_failure,
    j.held, j.concurrency_key, j.concurrency_limit, j.callback_url"""
