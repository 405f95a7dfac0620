"""Releasing held jobs (docs/design.md §2.2): a loop of its own beside the tick. Each pass
first asks RabbitMQ how many tickets wait in each queue (its room, and its congestion, are
measured against ``JOBQ_FAIR_DEPTH``), then releases in one transaction. A pass that
released jobs is followed by another at once (workers drain a backlog as fast as tickets
come); one that released none while jobs are held (no room yet) by another after
``HOLDING_PAUSE``; with nothing held, the loop waits ``JOBQ_DISPATCH_INTERVAL_SECONDS``.

Each pass (``shared.db.dispatch``) releases held jobs tenant by tenant within their limits,
in one transaction; their tickets are published after it commits, as a submit's are. A
publish that fails or is not confirmed is published again by the tick's unconfirmed sweep:
a released job has its ticket owed like any queued job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from shared.db.errors import is_transient

if TYPE_CHECKING:
    from shared.config import Settings
    from shared.db.dispatch import DispatchStore
    from shared.liveness import Liveness
    from shared.outbox import Outbox

log = logging.getLogger("jobq.scheduler")

#: The dispatch loop, as the scheduler's liveness knows it.
DISPATCH = "dispatch"
#: Between passes while jobs are held but none could be released: a pass then costs a
#: bounded count per queue, and a draining backlog needs its room refilled soon.
HOLDING_PAUSE = 0.02


class Dispatcher:
    def __init__(
        self, settings: Settings, store: DispatchStore, outbox: Outbox, liveness: Liveness
    ) -> None:
        self.settings = settings
        self.store = store
        self.outbox = outbox
        self.liveness = liveness
        #: Jobs released since start.
        self.released = 0

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.liveness.beat(DISPATCH)
            pause = self.settings.dispatch_interval_seconds
            try:
                released, holding = await self.dispatch()
                pause = 0.0 if released else HOLDING_PAUSE if holding else pause
            except Exception as exc:
                if is_transient(exc):
                    log.warning(
                        "dispatch failed; PostgreSQL unavailable", extra={"error": repr(exc)}
                    )
                else:
                    log.exception("dispatch failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), pause)

    async def dispatch(self) -> tuple[int, bool]:
        """One pass: how many jobs it released, and whether jobs are still held."""
        done = await self.store.dispatch(await self._ready() if self.store.depth else {})
        await self.outbox.send(done.tickets, "dispatched")
        self.released += len(done.tickets)
        return len(done.tickets), done.holding

    async def _ready(self) -> dict[str, int | None]:
        """The tickets waiting in each queue's RabbitMQ queue, by passive declare (``None``
        for one the broker did not answer for: the pass then releases nothing into it)."""
        ready: dict[str, int | None] = {}
        for name in await self.store.queues():
            try:
                ready[name], _ = await self.outbox.broker.queue_state(name)
            except Exception as exc:
                log.warning("queue depth unknown", extra={"queue": name, "error": repr(exc)})
                ready[name] = None
        return ready
