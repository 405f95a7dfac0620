"""Prometheus metrics (docs/operations.md §2): one ``Metrics`` per process, on a registry of
its own, handed to whatever counts.

Counters and histograms are per process (Prometheus sums them across replicas). The API's
processes (``jobq api --processes N``) share one port, so a scrape reaches any of them: there
they keep their values in ``PROMETHEUS_MULTIPROC_DIR`` (prometheus-client's multiprocess
mode, set up by the parent) and every process answers for all. The per-queue gauges are the
scheduler's (``QueueFigures``), read from PostgreSQL at scrape time.

A job type is a label, and with ``JOBQ_STRICT_TYPES`` off a client may name any type: past
``MAX_TYPES`` distinct types a process counts the rest under ``type="other"``, so no client
can grow the series without bound.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

if TYPE_CHECKING:
    from shared.liveness import Liveness

JobEvent = Literal["submitted", "started", "succeeded", "failed", "dead", "canceled"]
JOB_EVENTS: tuple[JobEvent, ...] = (
    "submitted", "started", "succeeded", "failed", "dead", "canceled",
)  # fmt: skip
_MEANING: dict[JobEvent, str] = {
    "submitted": "jobs accepted (rows committed)",
    "started": "attempts started (claims and HTTP leases)",
    "succeeded": "attempts that succeeded",
    "failed": "failed attempts that will be retried",
    "dead": "jobs that ended dead",
    "canceled": "jobs that ended canceled",
}
#: The counter of each status a failed attempt can leave its job in.
FAILURE_EVENTS: dict[str, JobEvent] = {"retrying": "failed", "dead": "dead", "canceled": "canceled"}
#: Distinct job types a process labels by name; the rest count as ``other``.
MAX_TYPES = 200
OTHER = "other"

#: From a millisecond to an hour: handlers and waits of every length.
LONG = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
#: Requests and confirms: a millisecond to ten seconds.
SHORT = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    """What one process counts. ``service`` labels the publish-confirm latency; with
    ``counting`` off (``JOBQ_METRICS=false``) nothing is counted or timed."""

    def __init__(
        self, service: str, registry: CollectorRegistry | None = None, counting: bool = True
    ) -> None:
        self.service = service
        self.counting = counting
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self._jobs = {
            e: Counter(f"jobq_jobs_{e}", _MEANING[e], ["queue", "type"], registry=r)
            for e in JOB_EVENTS
        }
        self._expired = Counter(
            "jobq_leases_expired", "running jobs whose lease ran out", ["queue"], registry=r
        )
        self._republished = Counter(
            "jobq_tickets_republished", "tickets published again", ["queue", "reason"], registry=r
        )
        self._deleted = Counter(
            "jobq_jobs_deleted", "finished jobs deleted past their retention",
            ["queue", "status"], registry=r,
        )  # fmt: skip
        self._callbacks = Counter(
            "jobq_callback_attempts", "attempts to deliver a finished job to its callback_url",
            ["outcome"], registry=r,
        )  # fmt: skip
        self._run = Histogram(
            "jobq_job_run_seconds", "one attempt's run time, handler start to outcome",
            ["queue", "type"], buckets=LONG, registry=r,
        )  # fmt: skip
        self._wait = Histogram(
            "jobq_job_queue_wait_seconds", "from due (run_at) to started", ["queue", "type"],
            buckets=LONG, registry=r,
        )  # fmt: skip
        self._submit = Histogram(
            "jobq_submit_seconds", "submit request latency, to the answer", ["route"],
            buckets=SHORT, registry=r,
        )  # fmt: skip
        self._confirm = Histogram(
            "jobq_publish_confirm_seconds", "a ticket batch's publish to its confirms",
            ["service"], buckets=SHORT, registry=r,
        )  # fmt: skip
        self._types: set[str] = set()

    def _type(self, name: str) -> str:
        if name in self._types:
            return name
        if len(self._types) >= MAX_TYPES:
            return OTHER
        self._types.add(name)
        return name

    def jobs(self, event: JobEvent, queue: str, type: str, n: int = 1) -> None:
        if self.counting:
            self._jobs[event].labels(queue, self._type(type)).inc(n)

    def each_job(self, event: JobEvent, jobs: Iterable[tuple[str, str]]) -> None:
        """Count ``(queue, type)`` pairs, one statement's jobs at a time."""
        if not self.counting:
            return
        counted: dict[tuple[str, str], int] = {}
        for key in jobs:
            counted[key] = counted.get(key, 0) + 1
        for (queue, type_), n in counted.items():
            self.jobs(event, queue, type_, n)

    def ran(self, queue: str, type: str, seconds: float) -> None:
        if self.counting:
            self._run.labels(queue, self._type(type)).observe(seconds)

    def waited(self, queue: str, type: str, seconds: float) -> None:
        if self.counting:
            self._wait.labels(queue, self._type(type)).observe(max(0.0, seconds))

    def leases_expired(self, queue: str, n: int = 1) -> None:
        if self.counting:
            self._expired.labels(queue).inc(n)

    def republished(self, queue: str, reason: str, n: int = 1) -> None:
        """Tickets sent again: ``unconfirmed`` (no confirm in time) or ``lost`` (queue empty)."""
        if self.counting:
            self._republished.labels(queue, reason).inc(n)

    def deleted(self, queue: str, status: str, n: int) -> None:
        if self.counting and n:
            self._deleted.labels(queue, status).inc(n)

    def callback_attempt(self, outcome: str) -> None:
        """A callback attempt ended ``delivered``, ``retrying`` or ``gave_up``."""
        if self.counting:
            self._callbacks.labels(outcome).inc()

    def submitted_in(self, route: str, seconds: float) -> None:
        """A submit request (``single`` or ``batch``) was answered in ``seconds``."""
        if self.counting:
            self._submit.labels(route).observe(seconds)

    def confirmed(self, seconds: float) -> None:
        if self.counting:
            self._confirm.labels(self.service).observe(seconds)

    def gauge(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        """A gauge read when scraped (a worker's in-flight jobs)."""
        Gauge(name, documentation, registry=self.registry).set_function(read)

    def watch(self, liveness: Liveness) -> None:
        """Each loop's ``jobq_loop_progress_age_seconds``, read when scraped."""
        ages = Gauge(
            "jobq_loop_progress_age_seconds", "seconds since a loop last made progress",
            ["loop"], registry=self.registry,
        )  # fmt: skip
        for loop in liveness.beats:
            ages.labels(loop).set_function(functools.partial(liveness.age, loop))

    def exposition(self) -> bytes:
        """The Prometheus text of this process, or of every API process (multiprocess)."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            merged = CollectorRegistry()
            MultiProcessCollector(merged)  # type: ignore[no-untyped-call]  # (untyped upstream)
            return generate_latest(merged)
        return generate_latest(self.registry)
