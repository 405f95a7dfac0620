"""Cron arithmetic for schedules, pure: the ticks of an expression in a time zone
(docs/design.md §8).

Parsing and matching are cronsim's, which follows Debian's cron, DST included: for a
five-field expression with a fixed minute and hour (``30 2 * * *``), a wall time the clocks
skip fires when the gap ends (03:00 on the spring-forward night in Europe/Berlin) and a wall
time they repeat fires once, at its first occurrence; an expression whose minute or hour is a
wildcard (``*/15 * * * *``) keeps to real time: nothing in the gap, both passes of the
repeated hour. A six-field expression (seconds first, ``*/5 * * * * *``) always keeps to real
time. Ticks are UTC instants, whole seconds.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

#: Missed ticks counted past this many are not counted further (one catch-up).
MOST_COUNTED = 10_000


class BadSchedule(ValueError):
    """An expression cronsim refuses, a zone the system does not know, or an expression that
    never fires."""


def zone(name: str) -> ZoneInfo:
    """The IANA zone ``name`` (``Europe/Berlin``, ``UTC``); ``BadSchedule`` if unknown."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise BadSchedule(
            f"unknown time zone {name[:64]!r} (an IANA name such as Europe/Berlin)"
        ) from None


def check(expr: str, tz: str) -> None:
    """Raise ``BadSchedule`` unless ``expr`` is a cron expression that fires in zone ``tz``."""
    next_after(expr, tz, datetime(2000, 1, 1, tzinfo=UTC))


def next_after(expr: str, tz: str, after: datetime) -> datetime:
    """The first tick strictly after the instant ``after``."""
    return next(_ticks(expr, tz, after))


def _ticks(expr: str, tz: str, after: datetime) -> Iterator[datetime]:
    start = after.astimezone(zone(tz)).replace(microsecond=0)  # astimezone sets ``fold``
    try:
        # Started in the second pass of a repeated hour, cronsim gives the first pass's
        # tick of a fixed time (earlier than ``after``) before going on: dropped.
        it = (u for t in CronSim(expr, start) if (u := t.astimezone(UTC)) > after)
        first = next(it)
    except CronSimError as exc:
        raise BadSchedule(f"bad cron expression {expr[:100]!r}: {exc}") from None
    except StopIteration:
        raise BadSchedule(f"cron expression {expr[:100]!r} never fires") from None
    return itertools.chain([first], it)


@dataclass(frozen=True, slots=True)
class Due:
    """What a schedule owes at ``now``: the ticks to fire (oldest first), how many older
    missed ticks are skipped for the catch-up bound, and the tick after ``now``."""

    ticks: list[datetime]
    skipped: int
    next_at: datetime


def due(expr: str, tz: str, first: datetime, now: datetime, catch_up: int) -> Due:
    """The ticks from ``first`` (the schedule's due tick, included) to ``now``: the latest
    ``catch_up`` of them are fired, older ones skipped (counted up to ``MOST_COUNTED``)."""
    if first > now:
        return Due([], 0, first)
    kept: deque[datetime] = deque([first], maxlen=catch_up)
    seen = 1
    it = _ticks(expr, tz, first)
    for tick in it:
        if tick > now:
            return Due(list(kept), seen - len(kept), tick)
        if seen >= MOST_COUNTED:  # a long outage of a frequent schedule: jump to now
            kept = deque(_last(expr, tz, now, catch_up), maxlen=catch_up)
            return Due(list(kept), seen, next_after(expr, tz, now))
        kept.append(tick)
        seen += 1
    raise BadSchedule(f"cron expression {expr[:100]!r} fires no more")


def _last(expr: str, tz: str, now: datetime, n: int) -> list[datetime]:
    """The last ``n`` ticks at or before ``now``, oldest first."""
    start = (now + timedelta(seconds=1)).astimezone(zone(tz)).replace(microsecond=0)
    back = CronSim(expr, start, reverse=True)
    return sorted(t.astimezone(UTC) for t in itertools.islice(back, n))
