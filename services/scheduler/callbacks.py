"""Delivering finished jobs to their ``callback_url`` (docs/design.md §10).

A loop of its own beside the tick: a slow receiver never delays a due job. It claims as many
due deliveries as it has free slots (``JOBQ_CALLBACK_CONCURRENCY``), POSTs each (one
``JOBQ_CALLBACK_TIMEOUT_SECONDS`` budget for DNS, connect and the answer) and records the
attempt; any number of schedulers may run it at once (``shared.db.callbacks``). The
destination is checked after DNS and connected to at the checked address
(``shared.egress``), so a name that resolves to a private address, now or on a later
attempt, is refused.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import httpx
import msgspec

from services.api.schemas import JobOut
from shared import egress
from shared.callbacks import EVENTS, EXCERPT_BYTES, CallbackPolicy, decide, signature
from shared.db.callbacks import Delivery
from shared.db.errors import is_transient
from shared.domain import JobStatus
from shared.ids import uuid7

if TYPE_CHECKING:
    from shared.db.callbacks import CallbackStore, Due
    from shared.egress import Resolve
    from shared.liveness import Liveness
    from shared.metrics import Metrics

log = logging.getLogger("jobq.scheduler")

#: The delivery loop, as the scheduler's liveness knows it.
CALLBACKS = "callbacks"
USER_AGENT = "jobq-callbacks/1"


class Callbacks:
    def __init__(
        self,
        policy: CallbackPolicy,
        store: CallbackStore,
        metrics: Metrics,
        liveness: Liveness,
        interval: float,
        resolve: Resolve = egress.resolve_host,
    ) -> None:
        self.policy = policy
        self.store = store
        self.metrics = metrics
        self.liveness = liveness
        self.interval = interval
        self.resolve = resolve
        # Built once: loading the CAs takes some 60 ms of CPU (as for the webhook handler).
        self.tls: ssl.SSLContext = httpx.create_ssl_context(trust_env=False)
        self._sending: set[asyncio.Task[Delivery]] = set()

    async def run(self, stop: asyncio.Event) -> None:
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                self.liveness.beat(CALLBACKS)
                free = self.policy.concurrency - len(self._sending)
                started = await self._start(free) if free > 0 else 0
                if started < free or free == 0:
                    # Nothing more due (or no slot): until a slot frees, the interval, or stop.
                    await asyncio.wait(
                        {stopping, *self._sending},
                        timeout=self.interval,
                        return_when=asyncio.FIRST_COMPLETED,
                    )
        finally:
            stopping.cancel()
            # Attempts under way end within their timeout; one cut short is claimed again
            # once its claim runs out (a receiver may see a delivery twice, never none).
            if self._sending:
                _, late = await asyncio.wait(self._sending, timeout=self.policy.timeout_seconds + 1)
                for task in late:
                    task.cancel()
                await asyncio.gather(*late, return_exceptions=True)

    async def _start(self, n: int) -> int:
        """Claim up to ``n`` due deliveries and start sending them; returns how many."""
        try:
            claimed = await self.store.claim(n, self.policy.claim_seconds)
        except Exception as exc:
            if not is_transient(exc):
                log.exception("callbacks not claimed")
            else:
                log.warning(
                    "callbacks not claimed; PostgreSQL unavailable", extra={"error": repr(exc)}
                )
            return 0
        for due in claimed:
            task = asyncio.create_task(self.deliver(due))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)
        return len(claimed)

    async def deliver(self, due: Due) -> Delivery:
        """One attempt: POST the job, then record what happened and what follows."""
        job = due.job
        event = EVENTS[JobStatus(job.status)]
        delivery = uuid7()
        at = datetime.now(UTC)
        started = time.monotonic()
        status, response, error, permanent = await self._try(due, event, delivery)
        decision = decide(due.attempt, self.policy, status, permanent)
        next_at = (
            datetime.now(UTC) + timedelta(seconds=decision.delay_seconds)
            if decision.outcome == "retrying"
            else None
        )
        if status is not None and error is None and decision.outcome != "delivered":
            error = f"answered HTTP {status}"
        assert job.finished_at is not None  # claimed only once finished
        attempt = Delivery(
            delivery, event, job.finished_at, due.attempt, at, time.monotonic() - started,
            status, error, response, decision.outcome, next_at,
        )  # fmt: skip
        self.metrics.callback_attempt(decision.outcome)
        try:
            await self.store.record(job.id, attempt)
        except Exception as exc:
            # The claim runs out and the delivery is attempted again.
            log.warning(
                "callback attempt not recorded", extra={"job_id": str(job.id), "error": repr(exc)}
            )
        if decision.outcome != "delivered":
            log.info(
                "callback not delivered",
                extra={"job_id": str(job.id), "attempt": due.attempt, "error": error,
                       "outcome": decision.outcome},
            )  # fmt: skip
        return attempt

    async def _try(
        self, due: Due, event: str, delivery: uuid.UUID
    ) -> tuple[int | None, str | None, str | None, bool]:
        """The attempt's status code and the start of the answer, or why there is none and
        whether that is final (no later attempt could do better)."""
        if due.attempt > self.policy.max_attempts:
            return None, None, "no attempt left (an earlier one ended without a result)", True
        if not due.secrets:
            return None, None, "no callback secret: the client that submitted it is gone", True
        try:
            status, response = await self._post(due, event, delivery)
        except (egress.RefusedDestination, httpx.InvalidURL) as exc:
            return None, None, str(exc), True
        except egress.EgressError as exc:
            return None, None, str(exc), False
        except TimeoutError:
            return None, None, f"no answer within {self.policy.timeout_seconds}s", False
        except Exception as exc:  # recorded and tried again, never lost in a task
            return None, None, repr(exc), False
        return status, response, None, False

    async def _post(self, due: Due, event: str, delivery: uuid.UUID) -> tuple[int, str]:
        """POST the job as ``GET /v1/jobs/{id}`` shows it; the status and the answer's start."""
        assert due.job.callback_url is not None  # claimed only with one
        body = msgspec.json.encode(JobOut.of(due.job))
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "X-Jobq-Event": event,
            "X-Jobq-Delivery": str(delivery),
            "X-Jobq-Attempt": str(due.attempt),
            "X-Jobq-Signature": signature(due.secrets, int(time.time()), body),
        }
        async with asyncio.timeout(self.policy.timeout_seconds):
            url = httpx.URL(due.job.callback_url)
            address = await egress.destination(url, self.policy, self.resolve)
            answer = await egress.exchange(
                url, address, "POST", headers, body, self.tls, EXCERPT_BYTES
            )
        excerpt = answer.data[:EXCERPT_BYTES].decode("utf-8", "replace").replace("\x00", "\ufffd")
        return answer.status, excerpt
