"""Turning accepted requests into committed jobs and confirmed tickets.

The row is committed first (a 2xx means the job exists, and it is answered then); the ticket
is published after, off the request path, with confirms in flight together for a batch;
confirms are recorded a little later (``shared.outbox``). If the process dies in between, or
the broker does not confirm, the scheduler publishes the job again. Single submits in flight at the same moment share one INSERT and one publish
(``Intake``, docs/design.md §7).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import msgspec
from litestar.exceptions import HTTPException, ValidationException

from services.api.schemas import BatchJobIn, JobIn, encoded_size
from shared.coalesce import Coalescer
from shared.db.errors import is_transient
from shared.db.submits import NewJob
from shared.db.tickets import ticket_of
from shared.domain import JobStatus
from shared.ids import uuid7

if TYPE_CHECKING:
    from services.api.limits import SubmitLimiter
    from services.api.tokens import Principal
    from services.api.types import TypeCatalog
    from shared.config import Settings
    from shared.db.records import JobRecord
    from shared.db.submits import Outcome, SubmitStore
    from shared.metrics import Metrics
    from shared.outbox import Outbox

log = logging.getLogger("jobq.api")


class PayloadTooLarge(HTTPException):
    status_code = 413


_canonical = msgspec.json.Encoder(order="sorted")
#: A NUL character in JSON text (PostgreSQL's jsonb cannot hold one): ``\u0000`` after an even
#: number of backslashes, so an escaped backslash followed by ``u0000`` is not one.
ESCAPED_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


#: The queue of a job whose request (and type) named none.
DEFAULT_QUEUE = "default"


def request_digest(data: JobIn) -> str:
    """What a job request asks for, whatever its key order or spacing: the digest an
    idempotency key is stored with, so that reusing the key for another request is refused."""
    fields = msgspec.structs.asdict(data)
    fields.pop("idempotency_key", None)  # a batch job carries its key in the body
    fields["queue"] = fields["queue"] or DEFAULT_QUEUE  # left out or named: the same request
    return canonical_digest(fields)


def canonical_digest(value: object) -> str:
    """SHA-256 of ``value``'s JSON with its keys sorted: one digest whatever the order."""
    return hashlib.sha256(_canonical.encode(value)).hexdigest()


def checked_payload(payload: object, settings: Settings) -> str:
    """A payload's JSON text: ``413`` over ``JOBQ_MAX_PAYLOAD_BYTES``, ``422`` holding a NUL."""
    payload_json, size = encoded_size(payload)
    if size > settings.max_payload_bytes:
        raise PayloadTooLarge(
            detail=f"payload is {size} bytes; the limit is {settings.max_payload_bytes}"
        )
    if ESCAPED_NUL.search(payload_json):
        raise ValidationException(detail="payload strings may not contain NUL (\\u0000)")
    return payload_json


def new_job(
    data: JobIn,
    principal: Principal,
    settings: Settings,
    idempotency_key: str | None,
    traceparent: str | None,
    tracestate: str | None = None,
) -> NewJob:
    """Validate what the schema cannot express and build the row to insert."""
    if data.run_at is not None and data.delay_seconds is not None:
        raise ValidationException(detail="give run_at or delay_seconds, not both")
    payload_json = checked_payload(data.payload, settings)
    if (
        data.retry_backoff_seconds
        and data.retry_backoff_max_seconds
        and data.retry_backoff_max_seconds < data.retry_backoff_seconds
    ):
        raise ValidationException(detail="retry_backoff_max_seconds is below retry_backoff_seconds")
    return NewJob(
        request_digest=request_digest(data) if idempotency_key else None,
        id=uuid7(),
        tenant=principal.tenant,
        type=data.type,
        queue=data.queue or DEFAULT_QUEUE,
        payload_json=payload_json,
        priority=data.priority,
        max_attempts=data.max_attempts,
        timeout_seconds=data.timeout_seconds,
        delay_seconds=data.delay_seconds or 0.0,
        run_at=data.run_at,
        idempotency_key=idempotency_key,
        retry_backoff_seconds=data.retry_backoff_seconds,
        retry_backoff_max_seconds=data.retry_backoff_max_seconds,
        traceparent=traceparent,
        tracestate=tracestate,
    )


#: Ticket batches of one process awaiting their confirms; more waits (a slow broker slows
#: submits instead of piling tickets up in memory).
PUBLISHES_IN_FLIGHT = 16


J = TypeVar("J", bound=JobIn)


class Intake:
    """The submit path: checks, rate limits, the INSERT, the publish.

    A batch request's jobs go in one INSERT. Single requests made at the same moment are
    gathered into one INSERT too, each job standing alone (one request's bad queue or reused
    key refuses that request only). Tickets of new due jobs are published once the rows are
    committed, without holding the answers: waiting for the confirm doubled a request's
    latency and held a statement slot for it. At most ``PUBLISHES_IN_FLIGHT`` batches are
    unconfirmed at once; beyond that, the next INSERT waits. (How many submits a process takes at once is bounded before they get here:
    ``services/api/shedding.py``.)
    """

    def __init__(
        self,
        submits: SubmitStore,
        outbox: Outbox,
        limiter: SubmitLimiter,
        settings: Settings,
        metrics: Metrics,
        accepted: Callable[[], None] = lambda: None,
        catalog: TypeCatalog | None = None,
    ) -> None:
        self.submits = submits
        #: Set with ``JOBQ_STRICT_TYPES``: submits must name a served type.
        self.catalog = catalog
        #: Told when jobs were committed (HTTP workers waiting here may lease them now).
        self.accepted = accepted
        self.outbox = outbox
        self.limiter = limiter
        self.settings = settings
        self.metrics = metrics
        self._room = asyncio.Semaphore(PUBLISHES_IN_FLIGHT)
        self._sending: set[asyncio.Task[object]] = set()
        self._singles: Coalescer[NewJob, tuple[JobRecord, bool]] = Coalescer(
            self._insert_each,
            max_items=settings.submit_gather_max,
            concurrency=settings.submit_statements,
            # A statement refused for one request's job (not for the database being down) is
            # tried again request by request: that request alone is refused.
            isolate=lambda exc: not is_transient(exc),
        )

    async def one(
        self,
        data: JobIn,
        principal: Principal,
        idempotency_key: str | None,
        traceparent: str | None,
        tracestate: str | None = None,
    ) -> tuple[JobRecord, bool]:
        """One job: with ``False`` if its idempotency key named a job already (returned)."""
        job = new_job(
            await self._typed(data, principal.tenant), principal, self.settings,
            idempotency_key, traceparent, tracestate,
        )  # fmt: skip
        self.limiter.take(principal.client_id, principal.tenant, 1)
        return await self._singles(job)

    async def many(
        self,
        data: list[BatchJobIn],
        principal: Principal,
        traceparent: str | None,
        tracestate: str | None = None,
    ) -> list[tuple[JobRecord, bool]]:
        """One batch request's jobs, all or none."""
        if len(data) > self.settings.max_batch_jobs:
            raise ValidationException(
                detail=f"a batch holds at most {self.settings.max_batch_jobs} jobs, not {len(data)}"
            )
        keys = [j.idempotency_key for j in data if j.idempotency_key]
        if len(keys) != len(set(keys)):
            raise ValidationException(detail="idempotency_key repeats within the batch")
        typed = (
            data if self.catalog is None else [await self._typed(j, principal.tenant) for j in data]
        )
        jobs = [
            new_job(j, principal, self.settings, j.idempotency_key, traceparent, tracestate)
            for j in typed
        ]
        self.limiter.take(principal.client_id, principal.tenant, len(jobs))
        results = await self.submits.insert(jobs)
        await self._publish(results)
        return results

    async def _typed(self, data: J, tenant: str) -> J:
        """With strict types: the type must be served and its schema fit the payload; the
        type's defaults fill what the request left out."""
        if self.catalog is None:
            return data
        defaults = await self.catalog.check(tenant, data.type, data.payload)
        filled = {k: v for k, v in defaults.items() if getattr(data, k, None) is None}
        return msgspec.structs.replace(data, **filled) if filled else data

    async def _insert_each(self, jobs: list[NewJob]) -> list[Outcome]:
        outcomes = await self.submits.insert_each(jobs)
        await self._publish([o for o in outcomes if isinstance(o, tuple)])
        return outcomes

    async def _publish(self, results: list[tuple[JobRecord, bool]]) -> None:
        self.metrics.each_job("submitted", ((j.queue, j.type) for j, created in results if created))
        tickets = [
            ticket_of(job) for job, created in results if created and job.status == JobStatus.QUEUED
        ]
        if not tickets:
            return
        self.accepted()
        await self._room.acquire()
        task = asyncio.create_task(self.outbox.send(tickets))
        self._sending.add(task)
        task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[object]) -> None:
        self._sending.discard(task)
        self._room.release()
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.warning("tickets not sent; the scheduler will", extra={"error": repr(exc)})

    async def close(self) -> None:
        await self._singles.close()
        await asyncio.gather(*self._sending, return_exceptions=True)
