"""Per-run results, their medians, and the plain-text tables."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

BATCH, SINGLE, CELERY = "jobq batch", "jobq single", "celery"
SYSTEMS = (BATCH, SINGLE, CELERY)


@dataclass(frozen=True)
class Result:
    """One measured run of one system. Times in seconds, from the first submit."""

    system: str
    run: int
    jobs: int
    enqueue_seconds: float
    total_seconds: float
    #: Per-request submit latencies (ms), only for single submits.
    p50_ms: float | None = None
    p99_ms: float | None = None

    @property
    def enqueue_rate(self) -> float:
        return self.jobs / self.enqueue_seconds

    @property
    def e2e_rate(self) -> float:
        return self.jobs / self.total_seconds


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending sequence (``q`` in 0..100)."""
    if not sorted_values:
        raise ValueError("no values")
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def _fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


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
    return "\n".join(lines)


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def render(results: Sequence[Result]) -> str:
    """The median table (with ratios to Celery's e2e) followed by every run's raw numbers."""
    by_system = {s: [r for r in results if r.system == s] for s in SYSTEMS}
    medians: dict[str, dict[str, float | None]] = {}
    for system, rs in by_system.items():
        medians[system] = {
            "jobs": _median([r.jobs for r in rs]),
            "enqueue": _median([r.enqueue_rate for r in rs]),
            "e2e": _median([r.e2e_rate for r in rs]),
            "p50": _median([r.p50_ms for r in rs]),
            "p99": _median([r.p99_ms for r in rs]),
        }
    celery_e2e = medians[CELERY]["e2e"]
    header = [
        "system",
        "jobs/run",
        "enqueue/s",
        "e2e jobs/s",
        "submit p50 ms",
        "p99 ms",
        "e2e / celery",
    ]
    rows = []
    for system in SYSTEMS:
        m = medians[system]
        if m["e2e"] is None:
            continue
        ratio = m["e2e"] / celery_e2e if celery_e2e and system != CELERY else None
        rows.append(
            [
                system,
                _fmt(m["jobs"]),
                _fmt(m["enqueue"]),
                _fmt(m["e2e"]),
                _fmt(m["p50"], 1),
                _fmt(m["p99"], 1),
                "-" if ratio is None else f"{ratio:.2f}x",
            ]
        )
    raw_header = [
        "run",
        "system",
        "jobs",
        "enqueue s",
        "total s",
        "enqueue/s",
        "e2e jobs/s",
        "p50 ms",
        "p99 ms",
        "e2e / celery",
    ]
    raw_rows = []
    celery_by_run = {r.run: r.e2e_rate for r in by_system[CELERY]}
    for r in sorted(results, key=lambda r: (r.run, SYSTEMS.index(r.system))):
        base = celery_by_run.get(r.run)
        vs_celery = f"{r.e2e_rate / base:.2f}x" if base and r.system != CELERY else "-"
        raw_rows.append(
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
                vs_celery,
            ]
        )
    raw = _table(raw_header, raw_rows, left=2)
    raw = "\n".join(("  " + line) for line in raw.splitlines())
    return f"{_table(header, rows)}\n\nEach run (e2e / celery: against that run's Celery):\n{raw}"
