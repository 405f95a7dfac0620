"""The benchmark's arithmetic: percentiles, /proc parsing and CPU accounting, the sustained
rate, the ratios to the peers, and what the report prints from them."""

from __future__ import annotations

import pytest

from tests.bench.procstat import (
    TICKS_PER_SECOND,
    Snapshot,
    Usage,
    cpu_ms_per_job,
    descendants,
    parse_stat,
    postgres_database,
)
from tests.bench.report import (
    BATCH,
    CELERY,
    DRAMATIQ,
    SINGLE,
    OpenLoop,
    Result,
    highest_sustained,
    percentile,
    ratios,
    render,
)


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 99.9) == 100
    assert percentile(values, 0) == 1
    assert percentile([7.0], 99.9) == 7
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)


def test_stat_fields_are_found_after_the_last_parenthesis() -> None:
    # comm may hold spaces and parentheses; fields 4 (ppid), 14+15 (utime+stime), 22 (start)
    fields = ["S", "41", *["0"] * 9, "250", "17", *["0"] * 6, "98765", "0"]
    stat = parse_stat(f"4242 (a) b (c) {' '.join(fields)}")
    assert (stat.pid, stat.comm, stat.ppid, stat.ticks, stat.start) == (
        4242,
        "a) b (c",
        41,
        267,
        98765,
    )
    assert stat.key == (4242, 98765)


def test_this_process_parses() -> None:
    with open("/proc/self/stat") as f:
        stat = parse_stat(f.read())
    assert stat.comm.startswith("python") or stat.comm == "pytest"
    assert stat.ppid > 0


@pytest.mark.parametrize(
    ("title", "database"),
    [
        ("postgres: 15/main: postgres jobq_benchh 127.0.0.1(54321) idle", "jobq_benchh"),
        ("postgres: postgres other 127.0.0.1(1) UPDATE", "other"),
        ("postgres: 15/main: postgres jobq_benchh [local] idle in transaction", "jobq_benchh"),
        ("postgres: 15/main: walwriter", None),
        ("postgres: 15/main: autovacuum worker jobq_benchh", None),
        ("postgres: 15/main: logical replication launcher", None),
        ("/usr/lib/postgresql/15/bin/postgres -D /var/lib/postgresql/15/main", None),
    ],
)
def test_postgres_backends_are_told_by_database(title: str, database: str | None) -> None:
    assert postgres_database(title) == database


def test_descendants_follow_every_generation_and_nothing_else() -> None:
    parents = {1: 0, 10: 1, 11: 10, 12: 10, 13: 11, 20: 1, 21: 20}
    assert descendants([10], parents) == {10, 11, 12, 13}
    assert descendants([10, 20], parents) == {10, 11, 12, 13, 20, 21}
    assert descendants([99], parents) == set()  # exited before the snapshot


def test_cpu_per_job_counts_new_processes_from_zero_and_a_reused_pid_as_new() -> None:
    before = Snapshot({"worker": {(10, 1): 100, (11, 1): 50, (12, 1): 30}, "api": {(5, 1): 0}})
    after = Snapshot(
        {
            # 10 ran 200 ticks; 11 exited (its ticks are lost); 13 is new; pid 12 was reused
            "worker": {(10, 1): 300, (13, 7): 40, (12, 9): 10},
            "api": {(5, 1): 0},
            "postgres": {(7, 1): 400},
        }
    )
    ms = cpu_ms_per_job(before, after, jobs=100)
    tick_ms = 1000 / TICKS_PER_SECOND
    assert ms["worker"] == pytest.approx((200 + 40 + 10) * tick_ms / 100)
    assert ms["api"] == 0
    assert ms["postgres"] == pytest.approx(400 * tick_ms / 100)
    with pytest.raises(ValueError, match="jobs"):
        cpu_ms_per_job(before, after, jobs=0)


def _point(
    offered: float, p99: float | None, run: int = 1, refused: dict[int, int] | None = None
) -> OpenLoop:
    return OpenLoop(
        run=run,
        offered=offered,
        accepted=int(offered * 10),
        seconds=10.0,
        p50_ms=1.0,
        p99_ms=p99,
        p999_ms=p99,
        due_p50_ms=2.0,
        due_p99_ms=9.0,
        refused=refused or {},
    )


def test_highest_sustained_rate_stops_at_the_first_failure() -> None:
    assert highest_sustained([_point(200, 5), _point(500, 24.9), _point(1000, 30)]) == 500
    # a pass above a failure is noise, not capacity
    assert highest_sustained([_point(2000, 10), _point(200, 5), _point(500, 40)]) == 200
    assert highest_sustained([_point(200, 25.0)]) is None  # the budget is strict
    # fast answers that refused work do not count
    assert highest_sustained([_point(200, 5), _point(500, 3, refused={503: 1})]) == 200
    assert highest_sustained([]) is None


def _result(system: str, run: int, e2e: float, cpu: dict[str, float] | None = None) -> Result:
    usage = None if cpu is None else Usage(cpu, {"worker": 100.0})
    return Result(system, run, 1000, 1000 / e2e, 1000 / e2e, usage=usage)


def test_ratios_of_the_medians_and_of_each_run() -> None:
    results = [
        _result(BATCH, 1, 1200),
        _result(BATCH, 2, 900),
        _result(BATCH, 3, 1000),
        _result(CELERY, 1, 600),
        _result(CELERY, 2, 300),
        _result(CELERY, 3, 500),
        _result(DRAMATIQ, 2, 2000),
    ]
    of_medians, each = ratios(results, BATCH, CELERY)
    assert of_medians == pytest.approx(1000 / 500)
    assert each == pytest.approx([2.0, 3.0, 2.0])
    of_medians, each = ratios(results, BATCH, DRAMATIQ)  # dramatiq ran in run 2 only
    assert of_medians == pytest.approx(0.5)
    assert each == pytest.approx([0.45])
    assert ratios(results, SINGLE, CELERY) == (None, [])


def test_cpu_sum_with_and_without_the_bench_process() -> None:
    r = _result(CELERY, 1, 500, {"worker": 0.5, "rabbitmq": 0.25, "bench": 0.125})
    assert r.cpu_sum_ms(with_bench=False) == 0.75
    assert r.cpu_sum_ms(with_bench=True) == 0.875
    assert _result(CELERY, 1, 500).cpu_sum_ms(with_bench=True) is None


def test_render_shows_medians_ratios_runs_open_loop_and_cpu() -> None:
    results = [
        _result(BATCH, 1, 1500, {"api": 0.2, "worker": 0.3, "bench": 0.1}),
        _result(BATCH, 2, 1100, {"api": 0.4, "worker": 0.5, "bench": 0.1}),
        _result(CELERY, 1, 1000, {"worker": 0.7, "bench": 0.3}),
        _result(CELERY, 2, 1000, {"worker": 0.9, "bench": 0.3}),
    ]
    points = [_point(200, 5, run=1), _point(200, 7, run=2), _point(500, 30, run=1)]
    points.append(_point(500, 20, run=2, refused={503: 4}))
    text = render(results, points)
    lines = text.splitlines()

    batch_median = next(line for line in lines if line.strip().startswith(BATCH))
    assert "1,300" in batch_median  # median of 1,500 and 1,100
    assert "1.30x (1.50/1.10)" in text
    assert "503x4" in text
    assert "5.0 / 7.0" in text  # p99 of each run at 200/s
    assert "every request accepted: 200/s (each run: 200/s, 200/s)" in text
    cpu_row = [line for line in lines if line.strip().startswith(BATCH)][-1].split()
    # api, worker (medians), services, bench, all, worker RSS, api RSS (none recorded)
    assert cpu_row[2:] == ["0.300", "0.400", "0.700", "0.100", "0.800", "100", "-"]


def test_render_leaves_out_what_was_not_measured() -> None:
    text = render([_result(CELERY, 1, 1000)], [])
    assert "Ratios" not in text
    assert "open loop" not in text
    assert "CPU ms per job" not in text
