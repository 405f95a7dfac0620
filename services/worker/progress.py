"""Progress that handlers report (``ctx.progress``): the latest of each running job, written
about once a second for all of them in one statement, fenced by each job's lease."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Callable

from jobq.handlers import Progress

from shared.db.leases import LeaseStore
from shared.telemetry import in_background

log = logging.getLogger("jobq.worker")


class ProgressWriter:
    def __init__(self, leases: LeaseStore, interval: float = 1.0) -> None:
        self.leases = leases
        self.interval = interval
        self._pending: dict[uuid.UUID, tuple[uuid.UUID, str]] = {}
        self._flush: asyncio.Task[None] | None = None

    def reporter(self, job_id: uuid.UUID, lease_id: uuid.UUID) -> Callable[[Progress], None]:
        """What a job's ``JobContext`` reports to; callable from a sync handler's thread."""
        loop = asyncio.get_running_loop()

        def report(p: Progress) -> None:
            text = json.dumps({"fraction": p.fraction, "message": p.message})
            loop.call_soon_threadsafe(self._note, job_id, lease_id, text)

        return report

    def _note(self, job_id: uuid.UUID, lease_id: uuid.UUID, text: str) -> None:
        self._pending[job_id] = (lease_id, text)
        if self._flush is None or self._flush.done():
            self._flush = in_background(self._write_soon())

    async def _write_soon(self) -> None:
        await asyncio.sleep(self.interval)
        items, self._pending = self._pending, {}
        try:
            await self.leases.progress([(job, lease, text) for job, (lease, text) in items.items()])
        except Exception as exc:  # progress is advisory: the next report writes again
            log.warning("progress not recorded", extra={"jobs": len(items), "error": repr(exc)})

    async def close(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flush
