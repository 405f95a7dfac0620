"""Deleting finished jobs past their retention (``JOBQ_RETENTION_*``, or their queue's own).

A loop of its own beside the tick, so a million rows to delete never delay a due job or an
expired lease. Every ``JOBQ_RETENTION_INTERVAL_SECONDS`` it goes through each queue and final
status, deleting ``JOBQ_RETENTION_BATCH_SIZE`` rows a statement (each statement locks only the
rows it deletes, for a moment) until a statement finds fewer, then goes on to the next; any
number of schedulers may do it at once (they skip each other's rows). An idempotency key is
honoured as long as its job's row lives, so it ends with the row. The fires of cron
schedules are kept as long as succeeded jobs (``JOBQ_RETENTION_SUCCEEDED_SECONDS``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from shared.db.errors import is_transient
from shared.db.schedules import ScheduleStore

if TYPE_CHECKING:
    from shared.config import Settings
    from shared.db.models import Queue
    from shared.db.queues import QueueStore
    from shared.db.sweeps import SweepStore
    from shared.liveness import Liveness
    from shared.metrics import Metrics

log = logging.getLogger("jobq.scheduler")

FINAL = ("succeeded", "dead", "canceled")
#: The retention loop, as the scheduler's liveness knows it.
RETENTION = "retention"


def retention_seconds(queue: Queue | None, status: str, settings: Settings) -> float:
    """How long jobs of ``queue`` (``None``: a queue no longer declared) that ended ``status``
    are kept (0: forever)."""
    own: int | None = getattr(queue, f"retention_{status}_seconds", None)
    return float(own if own is not None else getattr(settings, f"retention_{status}_seconds"))


class Retention:
    def __init__(
        self,
        settings: Settings,
        sweeps: SweepStore,
        queues: QueueStore,
        metrics: Metrics,
        liveness: Liveness,
    ) -> None:
        self.settings = settings
        self.sweeps = sweeps
        self.schedules = ScheduleStore(sweeps.engine)
        self.queues = queues
        self.metrics = metrics
        self.liveness = liveness

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.liveness.beat(RETENTION)
            try:
                await self.sweep(stop)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                log.warning(
                    "retention sweep failed; PostgreSQL unavailable", extra={"error": repr(exc)}
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.retention_interval_seconds)

    async def sweep(self, stop: asyncio.Event | None = None) -> int:
        """Delete what is past its retention now; returns how many jobs."""
        limit, total = self.settings.retention_batch_size, 0
        declared = {q.name: q for q in await self.queues.all()}
        for name in await self.sweeps.queues_with_finished():
            for status in FINAL:
                seconds = retention_seconds(declared.get(name), status, self.settings)
                if seconds <= 0:
                    continue
                while stop is None or not stop.is_set():
                    self.liveness.beat(RETENTION)
                    n = await self.sweeps.delete_finished(name, status, seconds, limit)
                    self.metrics.deleted(name, status, n)
                    total += n
                    if n < limit:
                        break
        if total:
            log.info("finished jobs deleted", extra={"jobs": total})
        await self._delete_fires(stop)
        return total

    async def _delete_fires(self, stop: asyncio.Event | None) -> None:
        seconds, limit = (
            self.settings.retention_succeeded_seconds,
            self.settings.retention_batch_size,
        )
        fires = 0
        while seconds > 0 and (stop is None or not stop.is_set()):
            self.liveness.beat(RETENTION)
            n = await self.schedules.delete_fires(seconds, limit)
            fires += n
            if n < limit:
                break
        if fires:
            log.info("schedule fires deleted", extra={"fires": fires})
