"""Per-run results, their medians, and the plain-text tables."""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from tests.bench.procstat import BENCH, POSTGRES, RABBITMQ, Usage

BATCH, SINGLE = "jobq batch", "jobq single"
#: The batch run again on a second jobq with ``JOBQ_METRICS=false``: what counting costs.
BATCH_NO_METRICS = "jobq batch, no metrics"
#: The batch run on a jobq with fair dispatch off (``JOBQ_FAIR_DEPTH=0``), and on the first
#: with every job naming a concurrency key (each held, then released by the dispatcher).
BATCH_FAIR_OFF = "jobq batch, fair off"
BATCH_KEYS = "jobq batch, keyed"
CELERY, CELERY_PG = "celery", "celery+pg"
DRAMATIQ, DRAMATIQ_CONFIRM = "dramatiq", "dramatiq+confirm"
JOBQ = (BATCH, BATCH_NO_METRICS, BATCH_FAIR_OFF, BATCH_KEYS, SINGLE)
PEERS = (CELERY, CELERY_PG, DRAMATIQ, DRAMATIQ_CONFIRM)
SYSTEMS = JOBQ + PEERS
#: The services' roles in the CPU table, in order; the bench process comes after their sum.
SERVICE_ROLES = ("api", "worker", "scheduler", POSTGRES, RABBITMQ)
#: An offered rate is sustained while its p99 stays under this (and every request is accepted).
P99_BUDGET_MS = 25.0

K = TypeVar("K")


@dataclass(frozen=True)
class Result:
    """One measured end-to-end run of one system. Times in seconds, from the first submit."""

    system: str
    run: int
    jobs: int
    enqueue_seconds: float
    total_seconds: float
    #: Per-request submit latencies (ms), only for single submits.
    p50_ms: float | None = None
    p99_ms: float | None = None
    p999_ms: float | None = None
    usage: Usage | None = None

    @property
    def enqueue_rate(self) -> float:
        return self.jobs / self.enqueue_seconds

    @property
    def e2e_rate(self) -> float:
        return self.jobs / self.total_seconds

    def cpu_ms(self, role: str) -> float | None:
        return None if self.usage is None else self.usage.cpu_ms.get(role)

    def cpu_sum_ms(self, with_bench: bool) -> float | None:
        """CPU per job of the services, and of the bench process too if ``with_bench``."""
        if self.usage is None:
            return None
        return sum(ms for role, ms in self.usage.cpu_ms.items() if with_bench or role != BENCH)


@dataclass(frozen=True)
class OpenLoop:
    """jobq single submits offered at a fixed rate for a while (latencies in ms, measured
    from each request's scheduled departure; due-to-start from ``run_at`` to ``started_at``)."""

    run: int
    offered: float
    accepted: int
    seconds: float
    p50_ms: float | None
    p99_ms: float | None
    p999_ms: float | None
    due_p50_ms: float | None
    due_p99_ms: float | None
    #: Answers other than 2xx by status, and requests that got no answer by error.
    refused: Mapping[int, int] = field(default_factory=dict)
    errors: Mapping[str, int] = field(default_factory=dict)

    @property
    def accepted_rate(self) -> float:
        return self.accepted / self.seconds

    @property
    def sustained(self) -> bool:
        """Every request accepted, and p99 under ``P99_BUDGET_MS``."""
        return (
            not self.refused
            and not self.errors
            and self.p99_ms is not None
            and self.p99_ms < P99_BUDGET_MS
        )


@dataclass(frozen=True)
class FairPoint:
    """A victim tenant's due-to-start latencies (ms) beside a flood ``flood`` times its rate
    (0: alone), with fair dispatch on or off."""

    run: int
    fair: bool
    flood: int
    victim_jobs: int
    flood_jobs: int
    due_p50_ms: float | None
    due_p99_ms: float | None


def _fairness(points: Sequence[FairPoint]) -> str:
    groups: dict[tuple[bool, int], list[FairPoint]] = {}
    for p in points:
        groups.setdefault((p.fair, p.flood), []).append(p)
    rows = [
        [
            "on" if fair else "off",
            f"{flood}x" if flood else "none",
            str(round(median(p.victim_jobs for p in at) or 0)),
            str(round(median(p.flood_jobs for p in at) or 0)),
            _fmt(median(p.due_p50_ms for p in at)),
            _fmt(median(p.due_p99_ms for p in at)),
            " ".join(_fmt(p.due_p99_ms) for p in at),
        ]
        for (fair, flood), at in sorted(groups.items(), key=lambda kv: (-kv[0][0], kv[0][1]))
    ]
    return _table(
        ["fair", "flood", "victim jobs", "flood jobs", "due p50 ms", "due p99 ms", "p99 each run"],
        rows,
        left=2,
    )


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending sequence (``q`` in 0..100)."""
    if not sorted_values:
        raise ValueError("no values")
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def highest_sustained(points: Iterable[OpenLoop]) -> float | None:
    """The highest offered rate that, like every lower one measured, was sustained; ``None``
    if the lowest was not. A pass above a failure is noise, not capacity."""
    best = None
    for point in sorted(points, key=lambda p: p.offered):
        if not point.sustained:
            break
        best = point.offered
    return best


def _fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _times(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x"


def _counts(counts: Mapping[K, int]) -> str:
    return " ".join(f"{k}x{n}" for k, n in sorted(counts.items(), key=str)) or "0"


def _rate(rate: float | None) -> str:
    return "none" if rate is None else f"{rate:,.0f}/s"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    """Aligned columns: the first ``left`` to the left, numbers to the right."""
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    lines = [
        "  ".join(
            cell.ljust(w) if i < left else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in (header, *rows)
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join("  " + line for line in lines)


def _by_system(results: Sequence[Result]) -> dict[str, list[Result]]:
    grouped = {s: [r for r in results if r.system == s] for s in SYSTEMS}
    return {s: rs for s, rs in grouped.items() if rs}


def _throughput(results: Sequence[Result]) -> str:
    """Medians per system."""
    systems = _by_system(results)

    def m(system: str, value: Callable[[Result], float | None]) -> float | None:
        return median(value(r) for r in systems[system])

    header = ["system", "jobs/run", "enqueue/s", "e2e jobs/s", "submit p50 ms", "p99", "p99.9"]
    rows = [
        [
            system,
            _fmt(m(system, lambda r: r.jobs)),
            _fmt(m(system, lambda r: r.enqueue_rate)),
            _fmt(m(system, lambda r: r.e2e_rate)),
            _fmt(m(system, lambda r: r.p50_ms), 1),
            _fmt(m(system, lambda r: r.p99_ms), 1),
            _fmt(m(system, lambda r: r.p999_ms), 1),
        ]
        for system in systems
    ]
    return _table(header, rows)


def ratios(results: Sequence[Result], system: str, peer: str) -> tuple[float | None, list[float]]:
    """``system``'s e2e rate as a multiple of ``peer``'s: of their medians, and in each run
    that measured both."""
    ours = {r.run: r.e2e_rate for r in results if r.system == system}
    theirs = {r.run: r.e2e_rate for r in results if r.system == peer}
    mine, base = median(ours.values()), median(theirs.values())
    of_medians = mine / base if mine is not None and base else None
    return of_medians, [ours[run] / theirs[run] for run in sorted(ours.keys() & theirs.keys())]


def _ratios(results: Sequence[Result]) -> str:
    """Each jobq row against each peer: the ratio of the medians, then each run's."""
    systems = _by_system(results)
    peers = [p for p in PEERS if p in systems]
    rows = []
    for system in (s for s in JOBQ if s in systems):
        row = [system]
        for peer in peers:
            of_medians, each = ratios(results, system, peer)
            runs = "/".join(f"{x:.2f}" for x in each)
            row.append(f"{_times(of_medians)} ({runs})")
        rows.append(row)
    return _table(["jobq e2e as a multiple of", *peers], rows)


def _runs(results: Sequence[Result]) -> str:
    """Every run's raw figures."""
    header = ["run", "system", "jobs", "enqueue s", "total s", "enqueue/s", "e2e jobs/s"]
    header += ["p50 ms", "p99 ms", "p99.9 ms", "cpu ms/job"]
    rows = [
        [
            str(r.run),
            r.system,
            str(r.jobs),
            f"{r.enqueue_seconds:.2f}",
            f"{r.total_seconds:.2f}",
            _fmt(r.enqueue_rate),
            _fmt(r.e2e_rate),
            _fmt(r.p50_ms, 1),
            _fmt(r.p99_ms, 1),
            _fmt(r.p999_ms, 1),
            _fmt(r.cpu_sum_ms(with_bench=True), 2),
        ]
        for r in sorted(results, key=lambda r: (r.run, SYSTEMS.index(r.system)))
    ]
    return _table(header, rows, left=2)


def _median_point(at: Sequence[OpenLoop]) -> OpenLoop:
    """The runs at one offered rate as one point: medians, refusals and errors summed."""
    return OpenLoop(
        run=0,
        offered=at[0].offered,
        accepted=round(median(p.accepted for p in at) or 0),
        seconds=median(p.seconds for p in at) or 1.0,
        p50_ms=median(p.p50_ms for p in at),
        p99_ms=median(p.p99_ms for p in at),
        p999_ms=median(p.p999_ms for p in at),
        due_p50_ms=median(p.due_p50_ms for p in at),
        due_p99_ms=median(p.due_p99_ms for p in at),
        refused=sum((Counter(p.refused) for p in at), Counter()),
        errors=sum((Counter(p.errors) for p in at), Counter()),
    )


def _open_loop(points: Sequence[OpenLoop]) -> str:
    """One row per offered rate (medians, p99 of each run), then the highest sustained rate,
    from the medians and from each run."""
    header = ["offered/s", "accepted/s", "p50 ms", "p99 ms", "p99.9 ms", "p99 each run"]
    header += ["non-2xx", "no answer", "due-to-start p50 ms", "p99 ms"]
    rows, medians = [], []
    for offered in sorted({p.offered for p in points}):
        at = sorted((p for p in points if p.offered == offered), key=lambda p: p.run)
        mid = _median_point(at)
        medians.append(mid)
        rows.append(
            [
                _fmt(offered),
                _fmt(mid.accepted_rate),
                _fmt(mid.p50_ms, 1),
                _fmt(mid.p99_ms, 1),
                _fmt(mid.p999_ms, 1),
                " / ".join(_fmt(p.p99_ms, 1) for p in at),
                _counts(mid.refused),
                _counts(mid.errors),
                _fmt(mid.due_p50_ms, 1),
                _fmt(mid.due_p99_ms, 1),
            ]
        )
    best = highest_sustained(medians)
    each = [
        highest_sustained(p for p in points if p.run == run)
        for run in sorted({p.run for p in points})
    ]
    verdict = (
        f"  highest offered rate with p99 < {P99_BUDGET_MS:g} ms and every request accepted:"
        f" {_rate(best)} (each run: {', '.join(_rate(b) for b in each)})"
    )
    return f"{_table(header, rows, left=0)}\n{verdict}"


def _usage(results: Sequence[Result]) -> str:
    """CPU ms per job of each role and resident memory, medians per system."""
    systems = {s: [r for r in rs if r.usage] for s, rs in _by_system(results).items()}
    roles = [role for role in SERVICE_ROLES if any(r.cpu_ms(role) is not None for r in results)]
    header = [*roles, "services", BENCH, "all", "worker RSS MiB", "api RSS MiB"]
    rows = []
    for system, rs in systems.items():
        if not rs:
            continue
        row = [system]
        row += [_fmt(median(r.cpu_ms(role) for r in rs), 3) for role in roles]
        row += [
            _fmt(median(r.cpu_sum_ms(with_bench=False) for r in rs), 3),
            _fmt(median(r.cpu_ms(BENCH) for r in rs), 3),
            _fmt(median(r.cpu_sum_ms(with_bench=True) for r in rs), 3),
        ]
        row += [
            _fmt(median(r.usage.rss_mib.get(role) for r in rs if r.usage))
            for role in ("worker", "api")
        ]
        rows.append(row)
    return _table(["system", *header], rows)


def render(
    results: Sequence[Result],
    open_loop: Sequence[OpenLoop],
    fairness: Sequence[FairPoint] = (),
) -> str:
    """Every table that has something to show, medians first, then each run."""
    runs = len({r.run for r in results} | {p.run for p in open_loop} | {p.run for p in fairness})
    sections = []
    if results:
        sections += [
            f"End to end, medians of {runs} run(s) (e2e = jobs / first submit .. last job"
            " finished):",
            _throughput(results),
        ]
    systems = _by_system(results)
    if any(s in systems for s in JOBQ) and any(s in systems for s in PEERS):
        sections += ["\nRatios of the medians (and of each run):", _ratios(results)]
    if results:
        sections += ["\nEach run (cpu ms/job: every process counted below):", _runs(results)]
    if open_loop:
        sections += [
            "\njobq single submits offered at fixed rates (open loop; medians; latency from each"
            " request's scheduled departure;\ndue-to-start: run_at .. started_at in PostgreSQL;"
            " non-2xx and no answer summed over the runs):",
            _open_loop(open_loop),
        ]
    if fairness:
        sections += [
            "\nA victim tenant's due-to-start (run_at .. started_at) beside a flood from another"
            " tenant, medians (docs/design.md §2.2):",
            _fairness(fairness),
        ]
    if any(r.usage for r in results):
        sections += [
            "\nCPU ms per job by process, medians (postgres: the system's own backends and the"
            " server's shared processes;\nrabbitmq: the whole broker; services: all but the"
            " bench process, which is jobq's load generator and the peers'\npublisher)"
            " and RSS at the end of a run (MiB, summed over the role's processes):",
            _usage(results),
        ]
    return "\n".join(sections)
