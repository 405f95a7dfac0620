"""``HttpWorker``: your ``@handler`` functions, run on jobs leased over HTTP.

For a machine that reaches jobq's API but not its RabbitMQ or PostgreSQL (another network, a
laptop, a serverless box). It keeps ``concurrency`` jobs running, heartbeats each at a third
of its lease, stops a handler whose job was canceled or whose lease was lost (its result
would be refused anyway), and records every outcome the way jobq's own worker does: a
``PermanentError`` or a payload that does not fit is dead at once, any other exception is
retried after the job's backoff, a handler past the job's ``timeout_seconds`` is a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from typing import Any

from jobq.client import AsyncClient
from jobq.errors import Conflict, JobqError
from jobq.handlers import Handler, JobContext, PermanentError, Progress, marked
from jobq.models import Lease

log = logging.getLogger("jobq.http_worker")


#: Progress goes out with a heartbeat at most this often.
PROGRESS_INTERVAL = 1.0
#: How often a worker says again which job types it serves (as jobq's own workers do).
REGISTER_EVERY_SECONDS = 60.0


class _Reported:
    """The latest progress of one job, reported from the handler (maybe from a thread)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.latest: Progress | None = None
        self.changed = asyncio.Event()

    def note(self, progress: Progress) -> None:
        self.loop.call_soon_threadsafe(self._set, progress)

    def _set(self, progress: Progress) -> None:
        self.latest = progress
        self.changed.set()

    def take(self) -> tuple[float, str] | None:
        latest, self.latest = self.latest, None
        self.changed.clear()
        return None if latest is None else (latest.fraction, latest.message)


class HttpWorker:
    """Runs ``handlers`` (functions marked with ``@jobq.handler``) on jobs of ``queues``."""

    def __init__(
        self,
        client: AsyncClient,
        handlers: Iterable[Callable[..., Any]],
        *,
        queues: Iterable[str] = ("default",),
        concurrency: int = 4,
        lease_seconds: float = 60.0,
        wait_seconds: float = 20.0,
    ) -> None:
        self.client = client
        self.handlers: dict[str, Handler] = {h.name: h for h in map(marked, handlers)}
        self.queues = list(queues)
        self.concurrency = concurrency
        self.lease_seconds = lease_seconds
        self.wait_seconds = wait_seconds
        self._running: set[asyncio.Task[None]] = set()

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Lease and run jobs until ``stop`` is set; then let the running ones finish."""
        stop = stop or asyncio.Event()
        registering = asyncio.create_task(self._keep_registered())
        try:
            await self._lease_until(stop)
        finally:
            registering.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await registering
        if self._running:
            await asyncio.wait(self._running)

    async def _keep_registered(self) -> None:
        """Say which types this worker serves now and every ``REGISTER_EVERY_SECONDS`` (an
        API with strict types accepts only types served within its grace period)."""
        while True:
            try:
                await self.client.register_types(self.handlers.values())
            except JobqError as exc:  # the next round registers again
                log.warning("job types not registered", extra={"error": str(exc)})
            await asyncio.sleep(REGISTER_EVERY_SECONDS)

    async def _lease_until(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            # Lease in batches: once half the slots are free (a lease per finished job would
            # double the requests).
            while len(self._running) > self.concurrency // 2:
                await asyncio.wait(self._running, return_when=asyncio.FIRST_COMPLETED)
            free = self.concurrency - len(self._running)
            try:
                leases = await self.client.lease(
                    self.queues, types=list(self.handlers), max_jobs=free,
                    wait=self.wait_seconds, lease_seconds=self.lease_seconds,
                )  # fmt: skip
            except JobqError as exc:  # the client already retried what is worth retrying
                log.warning("lease failed", extra={"error": str(exc)})
                await asyncio.sleep(1.0)
                continue
            for lease in leases:
                task = asyncio.create_task(self._run(lease))
                self._running.add(task)
                task.add_done_callback(self._running.discard)

    async def _run(self, lease: Lease) -> None:
        reported = _Reported(asyncio.get_running_loop())
        ctx = JobContext(
            lease.id, lease.tenant, lease.type, lease.attempt, lease.max_attempts, lease.lease_id,
            reporter=reported.note,
        )  # fmt: skip
        work = asyncio.create_task(self.handlers[lease.type](lease.payload, ctx))
        keeper = asyncio.create_task(self._keep(lease, work, reported))
        try:
            result = await asyncio.wait_for(work, lease.timeout_seconds)
        except asyncio.CancelledError:
            if keeper.done() and not keeper.cancelled():
                await self._report(lease, keeper.result())  # canceled, or the lease was lost
                return
            raise
        except TimeoutError:
            await self._fail(lease, f"ran past {lease.timeout_seconds} s", "TimeoutError", True)
        except Exception as exc:
            permanent = isinstance(exc, PermanentError)
            await self._fail(
                lease, str(exc) or type(exc).__name__, type(exc).__name__, not permanent
            )
        else:
            await self._settle(self.client.complete(lease, result))
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper

    async def _keep(self, lease: Lease, work: asyncio.Task[Any], reported: _Reported) -> str:
        """Heartbeat at a third of the lease, or a second after progress was reported (with
        it), until the job ends; stop it if canceled (``"canceled"``) or if the lease was lost
        (``"lost"``)."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(reported.changed.wait(), self.lease_seconds / 3)
                await asyncio.sleep(PROGRESS_INTERVAL)  # later reports join this beat
            progress = reported.take()
            try:
                beat = await self.client.heartbeat(lease, self.lease_seconds, progress)
            except Conflict:
                work.cancel()
                return "lost"
            except JobqError as exc:  # retried already; the lease may still hold: go on
                log.warning("heartbeat failed", extra={"job_id": str(lease.id), "error": str(exc)})
                continue
            if beat.cancel_requested:
                work.cancel()
                return "canceled"

    async def _report(self, lease: Lease, why: str) -> None:
        if why == "canceled":  # the API ends a canceled job canceled, whatever the failure
            await self._fail(lease, "canceled while running", "Canceled", True)
        else:
            log.warning("lease lost; the job runs elsewhere", extra={"job_id": str(lease.id)})

    async def _fail(self, lease: Lease, message: str, error_type: str, retryable: bool) -> None:
        await self._settle(
            self.client.fail(lease, message, error_type=error_type, retryable=retryable)
        )

    async def _settle(self, write: Any) -> None:
        try:
            await write
        except Conflict:
            log.warning("outcome refused: the lease was lost; the job runs elsewhere")
