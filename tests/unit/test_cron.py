"""Cron ticks in a time zone (``shared.cron``): DST gaps and repeats, catch-up bounds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from shared.cron import MOST_COUNTED, BadSchedule, check, due, next_after

BERLIN = "Europe/Berlin"


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def ticks(expr: str, tz: str, after: datetime, n: int) -> list[datetime]:
    out = []
    for _ in range(n):
        after = next_after(expr, tz, after)
        out.append(after)
    return out


def test_a_skipped_wall_time_fires_when_the_gap_ends() -> None:
    # 2026-03-29: Berlin's clocks jump from 02:00 CET to 03:00 CEST (01:00 UTC).
    got = ticks("30 2 * * *", BERLIN, utc(2026, 3, 28, 12), 3)
    assert got == [utc(2026, 3, 29, 1, 0), utc(2026, 3, 30, 0, 30), utc(2026, 3, 31, 0, 30)]


def test_a_repeated_wall_time_fires_once_at_its_first_occurrence() -> None:
    # 2026-10-25: 03:00 CEST falls back to 02:00 CET; 02:30 happens twice.
    got = ticks("30 2 * * *", BERLIN, utc(2026, 10, 24, 12), 2)
    assert got == [utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30)]
    # From inside the second pass, the next is tomorrow's.
    assert next_after("30 2 * * *", BERLIN, utc(2026, 10, 25, 1, 0)) == utc(2026, 10, 26, 1, 30)
    # 01:30 is not repeated: once a day, an hour earlier in UTC after the change.
    got = ticks("30 1 * * *", BERLIN, utc(2026, 10, 24, 12), 2)
    assert got == [utc(2026, 10, 24, 23, 30), utc(2026, 10, 26, 0, 30)]


def test_an_interval_keeps_to_real_time_across_both_changes() -> None:
    spring = ticks("*/15 * * * *", BERLIN, utc(2026, 3, 29, 0, 20), 4)
    assert spring == [utc(2026, 3, 29, 0, 30), utc(2026, 3, 29, 0, 45), utc(2026, 3, 29, 1, 0),
                      utc(2026, 3, 29, 1, 15)]  # fmt: skip
    autumn = ticks("*/15 * * * *", BERLIN, utc(2026, 10, 24, 23, 50), 10)
    assert autumn == [utc(2026, 10, 25, 0, 0) + timedelta(minutes=15 * i) for i in range(10)]


def test_a_six_field_fixed_time_keeps_to_real_time() -> None:
    # Not Debian cron's rules: skipped on the spring-forward night, twice on the fall-back one.
    spring = ticks("0 30 2 * * *", BERLIN, utc(2026, 3, 28, 12), 2)
    assert spring == [utc(2026, 3, 30, 0, 30), utc(2026, 3, 31, 0, 30)]
    autumn = ticks("0 30 2 * * *", BERLIN, utc(2026, 10, 24, 12), 3)
    assert autumn == [utc(2026, 10, 25, 0, 30), utc(2026, 10, 25, 1, 30), utc(2026, 10, 26, 1, 30)]


def test_seconds_come_first_in_six_fields() -> None:
    got = ticks("*/20 * * * * *", "UTC", utc(2026, 1, 1, 0, 0, 5), 3)
    assert got == [utc(2026, 1, 1, 0, 0, 20), utc(2026, 1, 1, 0, 0, 40), utc(2026, 1, 1, 0, 1)]


@pytest.mark.parametrize(
    ("expr", "tz", "says"),
    [
        ("61 * * * *", "UTC", "bad cron expression '61 * * * *': Bad minute"),
        ("* * *", "UTC", "Wrong number of fields"),
        ("0 0 30 2 *", "UTC", "Bad day-of-month"),
        ("* * * * *", "Mars/Olympus", "unknown time zone 'Mars/Olympus'"),
        ("* * * * *", "../../etc/passwd", "unknown time zone"),
        ("* * * * *", "", "unknown time zone"),
    ],
)
def test_bad_expressions_and_zones_are_refused(expr: str, tz: str, says: str) -> None:
    with pytest.raises(BadSchedule, match=says.replace("*", r"\*")):
        check(expr, tz)


def test_missed_ticks_fire_up_to_the_bound_and_the_rest_are_counted() -> None:
    first = utc(2026, 1, 1, 0, 0)
    now = utc(2026, 1, 1, 0, 9, 30)  # ten minutely ticks are due, all of them missed
    d = due("* * * * *", "UTC", first, now, catch_up=3, grace=10)
    assert d.ticks == [utc(2026, 1, 1, 0, 7), utc(2026, 1, 1, 0, 8), utc(2026, 1, 1, 0, 9)]
    assert (d.skipped, d.next_at) == (7, utc(2026, 1, 1, 0, 10))
    none = due("* * * * *", "UTC", first, now, catch_up=0, grace=10)
    assert (none.ticks, none.skipped, none.next_at) == ([], 10, utc(2026, 1, 1, 0, 10))
    on_time = due("* * * * *", "UTC", first, first, catch_up=0, grace=10)
    assert (on_time.ticks, on_time.skipped, on_time.next_at) == ([first], 0, utc(2026, 1, 1, 0, 1))
    early = due("* * * * *", "UTC", first, first - timedelta(seconds=1), catch_up=1, grace=10)
    assert (early.ticks, early.next_at) == ([], first)


def test_ticks_within_the_grace_are_late_not_missed() -> None:
    # A slow scheduler finds several second ticks due at once: all fire, whatever the bound.
    first = utc(2026, 1, 1, 0, 0, 0)
    d = due("* * * * * *", "UTC", first, utc(2026, 1, 1, 0, 0, 3), catch_up=0, grace=5)
    assert (len(d.ticks), d.skipped) == (4, 0)
    # Three seconds down with a two-second grace: the first is missed, one catches up.
    d = due("* * * * * *", "UTC", first, utc(2026, 1, 1, 0, 0, 4), catch_up=1, grace=2.5)
    assert d.ticks == [utc(2026, 1, 1, 0, 0, 1), *(utc(2026, 1, 1, 0, 0, s) for s in (2, 3, 4))]
    assert d.skipped == 1


def test_a_long_outage_of_a_frequent_schedule_jumps_to_now() -> None:
    first = utc(2026, 1, 1)
    now = first + timedelta(days=1, milliseconds=500)  # 86,401 second ticks due
    d = due("* * * * * *", "UTC", first, now, catch_up=2, grace=2)
    second = now.replace(microsecond=0)
    assert d.ticks == [second - timedelta(seconds=s) for s in (3, 2, 1, 0)]
    assert d.skipped == MOST_COUNTED
    assert d.next_at == second + timedelta(seconds=1)
