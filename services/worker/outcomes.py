"""Writing what came of an attempt: a success (group-committed), a failure (retrying after a
backoff, or dead with its dead-letter ticket), a release at shutdown, an honoured cancel.

Every write names the attempt's lease (``shared.db.leases``), so one that arrives late is
refused rather than applied twice, and every write is retried while PostgreSQL is
unreachable: the worker never drops an outcome it has.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from services.worker.execution import Failed, Outcome
from shared.coalesce import Coalescer
from shared.db.errors import is_transient
from shared.domain import decide_failure
from shared.metrics import FAILURE_EVENTS

if TYPE_CHECKING:
    import uuid

    from shared.config import Settings
    from shared.db.leases import Claimed, LeaseStore
    from shared.metrics import Metrics
    from shared.outbox import Outbox

log = logging.getLogger("jobq.worker")
T = TypeVar("T")


class Outcomes:
    """Records outcomes of the attempts one worker runs; counts them in ``stats``."""

    def __init__(
        self,
        settings: Settings,
        leases: LeaseStore,
        outbox: Outbox,
        stats: Counter[str],
        metrics: Metrics,
    ) -> None:
        self.settings = settings
        self.leases = leases
        self.outbox = outbox
        self.stats = stats
        self.metrics = metrics
        # Successes are group-committed; a batch refused for one bad result is retried item
        # by item.
        self._completions: Coalescer[tuple[uuid.UUID, uuid.UUID, str], bool] = Coalescer(
            leases.complete, max_items=500, isolate=lambda exc: not is_transient(exc)
        )

    async def record(self, job: Claimed, outcome: Outcome, span: str | None = None) -> None:
        """Write ``outcome``; ``span``: the ``traceparent`` of the attempt's span, kept with a
        failure for the retry's span to link."""
        if isinstance(outcome, Failed):
            await self._fail(job, outcome, span)
            return
        written = await persist(lambda: self._completions((job.id, job.lease_id, outcome.result)))
        self.stats["succeeded" if written else "stale"] += 1
        if written:
            self.metrics.jobs("succeeded", job.queue, job.type)
        else:
            log.warning("completion refused: lease no longer held")

    async def _fail(self, job: Claimed, failed: Failed, span: str | None) -> None:
        decision = decide_failure(
            job.attempts,
            job.max_attempts,
            permanent=failed.permanent,
            base=job.retry_backoff_seconds or self.settings.retry_backoff_seconds,
            cap=job.retry_backoff_max_seconds or self.settings.retry_backoff_max_seconds,
        )
        exc = failed.error
        error = {"type": type(exc).__name__, "message": str(exc)[:2000].replace("\x00", "")}
        outcome = await persist(
            lambda: self.leases.fail(job, decision.status, decision.delay_seconds, error, span)
        )
        self.stats[f"failed_{decision.status}"] += 1
        if outcome is not None:
            self.metrics.jobs(FAILURE_EVENTS[outcome.status], job.queue, job.type)
        dead = outcome.dead_letter if outcome is not None else None
        log.info("attempt failed", extra={"error": error, "next": str(decision.status)})
        if dead is not None:
            await self.outbox.send([dead])

    async def cancel(self, job: Claimed) -> None:
        """The job's cancel was requested while it ran: it ends canceled."""
        if await persist(lambda: self.leases.cancel_running(job)):
            self.metrics.jobs("canceled", job.queue, job.type)
        self.stats["canceled"] += 1

    async def release(self, job: Claimed) -> None:
        """Shutting down: the job goes back to its queue without spending the attempt."""
        ticket = await persist(lambda: self.leases.release(job))
        self.stats["released"] += 1
        if ticket is not None:
            await self.outbox.send([ticket], "released")

    async def close(self) -> None:
        """Wait for the successes still being written."""
        await self._completions.close()


async def persist(write: Callable[[], Awaitable[T]]) -> T:
    """Run a database write, retrying while PostgreSQL is unreachable. The write's own
    compare-and-set makes a late retry harmless."""
    delay = 0.1
    while True:
        try:
            return await write()
        except Exception as exc:
            if not is_transient(exc):
                raise
            log.warning("database unavailable; retrying", extra={"error": repr(exc)})
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
