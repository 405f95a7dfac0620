"""Cron arithmetic for schedules, pure: the ticks of an expression in a time zone
(docs/design.md §9).

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
    """What a schedule owes at ``now``: the ticks to fire (oldest first), how many missed
    ticks are skipped for the catch-up bound, and the first tick after ``now``."""

    ticks: list[datetime]
    skipped: int
    next_at: datetime


def due(expr: str, tz: str, first: datetime, now: datetime, catch_up: int, grace: float) -> Due:
    """The ticks from ``first`` (the schedule's next tick, included) to ``now``. Those less
    than ``grace`` seconds late are on time (a busy scheduler's lateness) and all fire; older
    ones were missed (no scheduler ran): the latest ``catch_up`` of them fire, the rest are
    skipped (counted up to ``MOST_COUNTED``)."""
    if first > now:
        return Due([], 0, first)
    cutoff = now - timedelta(seconds=grace)
    missed: deque[datetime] = deque(maxlen=catch_up)
    on_time: list[datetime] = []
    late = 0
    for tick in itertools.chain([first], _ticks(expr, tz, first)):
        if tick > now:
            return Due([*missed, *on_time], late - len(missed), tick)
        if tick > cutoff:
            on_time.append(tick)
            continue
        missed.append(tick)
        late += 1
        if late >= MOST_COUNTED:  # a long outage of a frequent schedule: jump to now
            return _jump(expr, tz, now, cutoff, catch_up)
    raise BadSchedule(f"cron expression {expr[:100]!r} fires no more")


def _jump(expr: str, tz: str, now: datetime, cutoff: datetime, catch_up: int) -> Due:
    """``Due`` from the ticks before ``now``, read backwards: the on-time ones, then the
    latest ``catch_up`` missed ones; ``MOST_COUNTED`` skipped."""
    start = (now + timedelta(seconds=1)).astimezone(zone(tz)).replace(microsecond=0)
    kept: list[datetime] = []
    missed = 0
    for tick in (t.astimezone(UTC) for t in CronSim(expr, start, reverse=True)):
        if tick <= cutoff:
            if missed == catch_up:
                break
            missed += 1
        kept.append(tick)
    return Due(kept[::-1], MOST_COUNTED, next_after(expr, tz, now))
