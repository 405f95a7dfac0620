"""``make soak``: the fault suite's workload for a chosen duration, with a fault every interval
(each kind once in a random order, then again), then the checker's figures and each service's
memory growth. Not part of ``make test``; exits non-zero when an invariant is violated.

    python -m tests.chaos.soak --minutes 10 --rate 20
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import secrets
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.bench.procstat import rss_kib
from tests.chaos import faults
from tests.chaos.cluster import Cluster
from tests.chaos.harness import CHAOS_QUEUES, Chaos, chaos_database
from tests.chaos.workload import Load, jobs
from tests.conftest import TEST_SECRET
from tests.services import LOCAL_AMQP_URL, LOCAL_DATABASE_URL, delete_broker_objects

Fault = Callable[[Chaos], Awaitable[str]]


async def kill_worker(c: Chaos) -> str:
    victim = random.choice(c.cluster.of("worker"))
    c.cluster.signal(victim, signal.SIGKILL)
    await c.cluster.start("worker")
    return f"kill -9 {victim.name}"


async def term_worker(c: Chaos) -> str:
    victim = random.choice(c.cluster.of("worker"))
    await c.cluster.start("worker")
    c.cluster.signal(victim, signal.SIGTERM)
    return f"SIGTERM {victim.name}"


async def freeze_worker(c: Chaos) -> str:
    victim = random.choice(c.cluster.of("worker"))
    c.cluster.signal(victim, signal.SIGSTOP)
    await asyncio.sleep(5)
    c.cluster.signal(victim, signal.SIGCONT)
    return f"SIGSTOP {victim.name} 5s"


async def kill_api(c: Chaos) -> str:
    c.cluster.signal(c.cluster.of("api")[0], signal.SIGKILL)
    await c.cluster.start("api")
    return "kill -9 api"


async def kill_scheduler(c: Chaos) -> str:
    c.cluster.signal(c.cluster.of("scheduler")[0], signal.SIGKILL)
    await c.cluster.start("scheduler")
    return "kill -9 scheduler"


async def restart_rabbitmq(c: Chaos) -> str:
    async with faults.rabbit_stopped():
        await asyncio.sleep(3)
    return "rabbitmq stop_app 3s"


async def close_connections(c: Chaos) -> str:
    await faults.rabbitmqctl("close_all_connections", "soak")
    return "close_all_connections"


async def purge(c: Chaos) -> str:
    await faults.rabbitmqctl("purge_queue", f"{c.cluster.prefix}.q.default")
    return "purge_queue"


async def crash_postgres(c: Chaos) -> str:
    since = faults.utcnow()
    async with faults.postgres_down():
        await asyncio.sleep(4)
        until = faults.utcnow()
    await c.excuse_leases_held(since, until)
    return "postgres stop -m immediate 4s"


async def terminate_backends(c: Chaos) -> str:
    cut = await faults.terminate_backends(c.admin_dsn, c.database)
    return f"pg_terminate_backend ({cut} connections)"


FAULTS: list[Fault] = [
    kill_worker, term_worker, freeze_worker, kill_api, kill_scheduler, restart_rabbitmq,
    close_connections, purge, crash_postgres, terminate_backends,
]  # fmt: skip


@dataclass
class Memory:
    """Resident memory of every process, sampled every few seconds while it lives."""

    samples: dict[int, tuple[str, list[tuple[float, int]]]] = field(default_factory=dict)

    async def sample(self, cluster: Cluster, every: float, stop: asyncio.Event) -> None:
        while not stop.is_set():
            for p in cluster.procs:
                if p.alive() and (kib := rss_kib(p.pid)):
                    self.samples.setdefault(p.pid, (p.name, []))[1].append((time.monotonic(), kib))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every)

    def report(self, warmup: float) -> list[str]:
        """Per process that lived a minute past the warm-up: its first sample after the
        warm-up, its last, the growth and the peak."""
        lines = []
        for name, series in sorted(self.samples.values()):
            start = series[0][0] + warmup
            kept = [(t, kib) for t, kib in series if t >= start]
            if len(kept) < 2 or kept[-1][0] - kept[0][0] < 60:
                continue
            (t0, first), (t1, last) = kept[0], kept[-1]
            lines.append(
                f"  {name:12} {first / 1024:6.1f} MiB -> {last / 1024:6.1f} MiB"
                f" ({100.0 * (last - first) / first:+.1f}%) over {(t1 - t0) / 60:4.1f} min,"
                f" peak {max(kib for _, kib in kept) / 1024:.1f} MiB"
            )
        return lines


async def soak(args: argparse.Namespace, log_dir: Path) -> int:
    rnd = random.Random(args.seed)
    random.seed(args.seed)
    prefix = f"jobqsoak{secrets.token_hex(3)}"
    duration = args.minutes * 60
    memory, sampled = Memory(), asyncio.Event()
    log: list[str] = []
    async with chaos_database(LOCAL_DATABASE_URL) as url:
        cluster = Cluster(url, LOCAL_AMQP_URL, prefix, TEST_SECRET, log_dir)
        c = Chaos(cluster, await Load.against(cluster.url, url, TEST_SECRET))
        try:
            await c.up(workers=args.workers)
            sampler = asyncio.create_task(memory.sample(cluster, 5.0, sampled))
            specs = jobs(int(args.rate * duration), seed=args.seed)
            load = asyncio.create_task(c.load.run(specs, rate=args.rate, give_up_after=300))
            order: list[Fault] = []
            t0 = time.monotonic()
            while not load.done():
                await asyncio.wait([load], timeout=args.fault_every)
                if load.done():
                    break
                if not order:  # every kind of fault once, in a random order, then again
                    order = rnd.sample(FAULTS, len(FAULTS))
                fault = order.pop()
                started = time.monotonic()
                what = await fault(c)
                log.append(f"  {started - t0:7.1f}s  {what}")
                print(log[-1], flush=True)
            ended = asyncio.get_running_loop().time()
            await load
            sampled.set()
            await sampler
            f = await c.settle(
                f"soak {args.minutes} min, fault every {args.fault_every:.0f}s", ended
            )
        finally:
            sampled.set()
            await c.stop()
            await delete_broker_objects(LOCAL_AMQP_URL, prefix, CHAOS_QUEUES)
    print(f"\nfaults injected ({len(log)}):\n" + "\n".join(log))
    print("\nmemory (RSS) of each process that lived a minute or more past a 30 s warm-up:")
    print("\n".join(memory.report(warmup=30.0)) or "  (none)")
    print(f"\n{f.summary()}")
    problems = f.problems()
    for line in [*problems, *f.examples[:20]]:
        print(f"  {line}")
    print("all invariants hold" if not problems else "INVARIANTS VIOLATED")
    return 1 if problems else 0


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos.soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=20.0, help="jobs submitted per second")
    parser.add_argument("--fault-every", type=float, default=60.0, help="seconds between faults")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    logs = Path(tempfile.mkdtemp(prefix="jobq-soak-"))
    print(f"soak: {args.minutes} min at {args.rate} jobs/s, a fault every {args.fault_every}s;"
          f" service logs in {logs}", flush=True)  # fmt: skip
    sys.exit(asyncio.run(soak(args, logs)))


if __name__ == "__main__":
    main()
