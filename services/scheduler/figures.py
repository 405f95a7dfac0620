"""The per-queue gauges (docs/operations.md §2), read from PostgreSQL when Prometheus scrapes:
what each declared queue holds by what it waits for, and the dead-letter queue's depth.

Read at scrape time, at most once a second however many scrape, so the figures are never
older than the scrape and cost one statement per scrape. A read that fails leaves the last
figures in place (and says so in the log): a scrape during a database outage still answers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from shared.db.sweeps import QueueFigures, SweepStore
    from shared.messaging import Broker

log = logging.getLogger("jobq.scheduler")

#: A scrape within this long of the last read gets the figures of that read.
FRESH_SECONDS = 1.0

#: (metric, what it means, the ``QueueFigures`` field it shows)
GAUGES = (
    ("jobq_queue_ready_jobs", "queued and due: what workers should be taking now", "ready"),
    ("jobq_queue_delayed_jobs", "scheduled, not due yet", "delayed"),
    ("jobq_queue_retrying_jobs", "waiting out a retry backoff", "retrying"),
    ("jobq_queue_running_jobs", "running", "running"),
    (
        "jobq_queue_oldest_ready_age_seconds",
        "how long the oldest ready job has been due (0 when none)",
        "oldest_ready_seconds",
    ),
    (
        "jobq_queue_unconfirmed_tickets",
        "queued jobs whose ticket's publish is not recorded as confirmed yet",
        "unconfirmed",
    ),
)


class QueueGauges(Collector):
    """A prometheus-client collector of the scheduler's per-queue figures."""

    def __init__(self, sweeps: SweepStore, broker: Broker, timeout: float) -> None:
        self.sweeps = sweeps
        self.broker = broker
        self.timeout = timeout
        self._figures: list[QueueFigures] = []
        self._dead_letters: int | None = None
        self._read_at = float("-inf")
        self._lock = asyncio.Lock()

    async def refresh(self) -> None:
        """Read the figures again unless a read within ``FRESH_SECONDS`` has them."""
        async with self._lock:
            if time.monotonic() - self._read_at < FRESH_SECONDS:
                return
            try:
                async with asyncio.timeout(self.timeout):
                    self._figures = await self.sweeps.queue_figures()
                    self._dead_letters = await self.broker.dead_letters()
            except Exception as exc:
                log.warning("queue figures not read", extra={"error": repr(exc)})
            self._read_at = time.monotonic()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        for name, documentation, field in GAUGES:
            family = GaugeMetricFamily(name, documentation, labels=["queue"])
            for f in self._figures:
                family.add_metric([f.queue], float(getattr(f, field)))
            yield family
        if self._dead_letters is not None:
            yield GaugeMetricFamily(
                "jobq_dead_letter_messages", "messages in RabbitMQ's dead-letter queue",
                value=self._dead_letters,
            )  # fmt: skip
