"""Releasing held jobs (docs/design.md §2.2): a loop of its own beside the tick, every
``JOBQ_DISPATCH_INTERVAL_SECONDS``, at once again while a pass filled its batch.

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
            more = False
            try:
                more = await self.dispatch()
            except Exception as exc:
                if is_transient(exc):
                    log.warning(
                        "dispatch failed; PostgreSQL unavailable", extra={"error": repr(exc)}
                    )
                else:
                    log.exception("dispatch failed")
            if more:
                await asyncio.sleep(0)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.dispatch_interval_seconds)

    async def dispatch(self) -> bool:
        """One pass; whether held jobs are left that the next pass may release at once."""
        done = await self.store.dispatch()
        await self.outbox.send(done.tickets, "dispatched")
        self.released += len(done.tickets)
        return done.more
