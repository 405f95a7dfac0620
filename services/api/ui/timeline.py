"""A job's history as the dashboard shows it, read from its row alone (pure).

The row keeps every failed attempt in ``errors`` (each with its ``attempt`` number, no
instant), so a re-queue shows where the numbering starts again: ``attempts`` is reset to 0 by
a replay (``/v1/dead/replay``, the dashboard's) and by ``POST /v1/jobs/{id}/retry``, the errors
before it are kept. Replays are recorded (``dead_letter_replays``: who and when), retries not;
the k-th re-queue is taken to be the k-th recorded replay while there are any.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

#: What an event was: how the page marks it.
OK, BAD, INFO = "ok", "bad", "info"


@dataclass(frozen=True, slots=True)
class Event:
    title: str
    detail: str = ""
    at: datetime | None = None
    tone: str = INFO


def timeline(job: Any, replays: Sequence[Any] = ()) -> list[Event]:
    """Created, dependencies, each failed attempt (and each re-queue, with its ``replays``
    record: ``at``, ``actor``, ``queue_after``), the running or last attempt, and how it
    ended; in the order they happened."""
    requeues = _requeues(replays)
    events = [Event("created", f"queue {job.queue}, priority {job.priority}", job.created_at)]
    if job.depends_on:
        left = job.waiting_on or 0
        events.append(
            Event(
                "waits for dependencies",
                f"{len(job.depends_on)} jobs, {left} not finished"
                f" (if one fails: {job.on_dependency_failure or 'cancel'})",
            )
        )
    previous = 0
    for error in job.errors or []:
        attempt = error.get("attempt", 0) if isinstance(error, dict) else 0
        if previous and attempt <= previous:
            events.append(next(requeues))
        previous = attempt
        events.append(Event(f"attempt {attempt} failed", describe(error), tone=BAD))
    if previous and job.attempts < previous:  # re-queued after its last failure
        events.append(next(requeues))
    if job.started_at is not None:
        started = Event(f"attempt {job.attempts} started", at=job.started_at)
        # The last attempt failed: it started before its error.
        last_failed = previous == job.attempts and job.status in ("retrying", "dead")
        events.insert(len(events) - 1 if last_failed else len(events), started)
    if job.status == "running" and job.progress:
        fraction = job.progress.get("fraction")
        share = f"{fraction:.0%}" if isinstance(fraction, int | float) else ""
        events.append(
            Event("progress", " ".join(filter(None, [share, job.progress.get("message")])))
        )
    if job.finished_at is not None:
        tone = OK if job.status == "succeeded" else BAD if job.status == "dead" else INFO
        events.append(Event(str(job.status), at=job.finished_at, tone=tone))
    return events


def describe(error: Any) -> str:
    """``Type: message`` of a recorded error, whatever shape it has."""
    if not isinstance(error, dict):
        return str(error)
    return ": ".join(str(error[k]) for k in ("type", "message") if error.get(k))


def _requeues(replays: Sequence[Any]) -> Iterator[Event]:
    for r in replays:
        moved = f", into queue {r.queue_after}" if r.queue_after != r.queue_before else ""
        yield Event("replayed", f"by client {r.actor}{moved}", r.at)
    while True:
        yield Event("re-queued by hand", "a fresh attempt budget")
