"""CPU time and memory of the processes behind a measurement, read from ``/proc``.

A ``Probe`` names its roles (``api``, ``worker``, …) by the processes the bench started; each
role counts those processes and all their descendants (``jobq api --processes 2`` is a
supervisor with children, a Celery worker forks its pool). Two roles are found by name: the
PostgreSQL server (the backends of the system's own databases, plus the server's shared
processes: postmaster, WAL writer, checkpointer, …) and RabbitMQ (``beam.smp``, all of it).
The bench process itself is the ``bench`` role: it is the load generator for jobq and the
publisher for the peers. A process is keyed by pid and start time, so a reused pid is a new
process; one that exited during a phase takes its ticks with it (PostgreSQL and RabbitMQ
are shared with anything else they serve: on a busy machine their figures are upper bounds).
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")
POSTGRES, RABBITMQ, BENCH = "postgres", "rabbitmq", "bench"

#: A process: pid and start time (clock ticks after boot), unique for the machine's uptime.
Key = tuple[int, int]


@dataclass(frozen=True)
class Stat:
    """The fields of ``/proc/<pid>/stat`` the bench needs."""

    pid: int
    comm: str
    ppid: int
    #: utime + stime, in clock ticks.
    ticks: int
    start: int

    @property
    def key(self) -> Key:
        return self.pid, self.start


def parse_stat(line: str) -> Stat:
    """One ``/proc/<pid>/stat`` line. ``comm`` is in parentheses and may hold spaces and
    parentheses itself, so the fields after it are found from the *last* ``)``."""
    head, _, tail = line.rpartition(")")
    pid, _, comm = head.partition(" (")
    rest = tail.split()
    # rest[0] is field 3 (state): ppid is field 4, utime 14, stime 15, starttime 22.
    return Stat(int(pid), comm, int(rest[1]), int(rest[11]) + int(rest[12]), int(rest[19]))


def postgres_database(title: str) -> str | None:
    """The database of a PostgreSQL client backend from its process title
    (``postgres: [cluster: ]user database host(port) state``), or ``None`` for the
    postmaster and the server's shared processes (``postgres: 15/main: walwriter``)."""
    if not title.startswith("postgres: "):
        return None
    words = title.removeprefix("postgres: ").split()
    if words and words[0].endswith(":"):  # cluster_name, as Debian sets it
        words = words[1:]
    if len(words) >= 3 and (words[2].endswith(")") or words[2] == "[local]"):
        return words[1]
    return None


def descendants(roots: Collection[int], parents: Mapping[int, int]) -> set[int]:
    """``roots`` and every process below them, given each pid's parent."""
    children: defaultdict[int, list[int]] = defaultdict(list)
    for pid, ppid in parents.items():
        children[ppid].append(pid)
    found, todo = set(), [pid for pid in roots if pid in parents]
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children[pid])
    return found


@dataclass(frozen=True)
class Usage:
    """What a phase cost: CPU ms per job per role, and each started role's RSS at its end."""

    cpu_ms: Mapping[str, float]
    rss_mib: Mapping[str, float]


@dataclass(frozen=True)
class Snapshot:
    """Per role, the CPU ticks of each of its processes at one instant."""

    ticks: Mapping[str, Mapping[Key, int]]


def cpu_ms_per_job(before: Snapshot, after: Snapshot, jobs: int) -> dict[str, float]:
    """CPU milliseconds per job of each role between two snapshots. A process absent from
    ``before`` started in between and counts from zero."""
    if jobs < 1:
        raise ValueError("jobs must be at least 1")
    result = {}
    for role, now in after.ticks.items():
        then = before.ticks.get(role, {})
        spent = sum(ticks - then.get(key, 0) for key, ticks in now.items())
        result[role] = spent * 1000 / TICKS_PER_SECOND / jobs
    return result


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:  # the process exited while the bench looked
        return None


def _stats() -> Iterator[Stat]:
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            line = _read(entry / "stat")
            if line:
                yield parse_stat(line)


def rss_kib(pid: int) -> int:
    """``VmRSS`` of a process in KiB (0 if it has exited)."""
    for line in (_read(PROC / str(pid) / "status") or "").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Probe:
    """Snapshots of one system's processes. ``trees`` names each role's started processes
    (asked at every snapshot: pids are known only once the system runs); ``databases`` are
    the PostgreSQL databases whose backends count; ``excluded`` are backends to leave out
    (the bench's own connections: they only poll)."""

    def __init__(
        self,
        trees: Callable[[], Mapping[str, Sequence[int]]],
        databases: Collection[str] = (),
    ) -> None:
        self.trees = trees
        self.databases = frozenset(databases)
        self.excluded: set[int] = set()

    def snapshot(self) -> Snapshot:
        stats = {s.pid: s for s in _stats()}
        parents = {pid: s.ppid for pid, s in stats.items()}
        roles: dict[str, set[int]] = {
            role: descendants(roots, parents) for role, roots in self.trees().items()
        }
        roles[BENCH] = {os.getpid()}
        roles[POSTGRES] = {pid for pid, s in stats.items() if self._counts_for_postgres(s)}
        roles[RABBITMQ] = {pid for pid, s in stats.items() if s.comm == "beam.smp"}
        return Snapshot(
            {
                role: {stats[pid].key: stats[pid].ticks for pid in pids if pid in stats}
                for role, pids in roles.items()
            }
        )

    def _counts_for_postgres(self, stat: Stat) -> bool:
        if stat.comm != "postgres" or stat.pid in self.excluded:
            return False
        title = (_read(PROC / str(stat.pid) / "cmdline") or "").replace("\0", " ").strip()
        database = postgres_database(title)
        return database is None or database in self.databases

    def usage_since(self, before: Snapshot, jobs: int) -> Usage:
        """CPU per job since ``before``, and the resident memory of each started role now
        (its processes summed: pages shared after a fork count once per process)."""
        cpu = cpu_ms_per_job(before, self.snapshot(), jobs)
        parents = {s.pid: s.ppid for s in _stats()}
        rss = {
            role: sum(rss_kib(pid) for pid in descendants(roots, parents)) / 1024
            for role, roots in self.trees().items()
        }
        return Usage(cpu, rss)
