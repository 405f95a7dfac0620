"""``make soak``: the fault suite's workload for a chosen duration, with a fault every interval
(each kind once in a random order, then again), then the checker's figures and each service's
memory growth. Not part of ``make test``; exits non-zero when an invariant is violated.

    python -m tests.chaos.soak --minutes 10 --rate 20
"""

from __future__ import annotations

import argparse
import asyncio
import random
import secrets
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from tests.chaos import faults
from tests.chaos.cluster import Cluster
from tests.chaos.harness import Chaos, chaos_database, delete_broker_objects
from tests.chaos.workload import Load, jobs
from tests.conftest import TEST_SECRET
from tests.procs import Proc
from tests.services import LOCAL_AMQP_URL, LOCAL_DATABASE_URL

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


def rss_kib(proc: Proc) -> int:
    """Resident memory of a live process, in KiB (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


async def soak(args: argparse.Namespace, log_dir: Path) -> int:
    rnd = random.Random(args.seed)
    random.seed(args.seed)
    prefix = f"jobqsoak{secrets.token_hex(3)}"
    duration = args.minutes * 60
    async with chaos_database(LOCAL_DATABASE_URL) as url:
        cluster = Cluster(url, LOCAL_AMQP_URL, prefix, TEST_SECRET, log_dir)
        c = Chaos(cluster, Load(cluster.url, TEST_SECRET))
        try:
            await c.up(workers=args.workers)
            specs = jobs(int(args.rate * duration), seed=args.seed)
            load = asyncio.create_task(c.load.run(specs, rate=args.rate, give_up_after=300))
            await asyncio.sleep(min(30.0, duration / 4))  # warm up before the first sample
            first = {p.pid: (p.name, rss_kib(p)) for p in cluster.procs if p.alive()}
            peak = {pid: kib for pid, (_, kib) in first.items()}
            log: list[str] = []
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
                for p in cluster.procs:
                    if p.pid in peak:
                        peak[p.pid] = max(peak[p.pid], rss_kib(p))
            last = {p.pid: rss_kib(p) for p in cluster.procs if p.pid in first}
            ended = asyncio.get_running_loop().time()
            await load
            f = await c.settle(
                f"soak {args.minutes} min, fault every {args.fault_every:.0f}s", ended
            )
        finally:
            await c.stop()
            await delete_broker_objects(LOCAL_AMQP_URL, prefix)
    print(f"\nfaults injected ({len(log)}):\n" + "\n".join(log))
    print("\nmemory (RSS) of the processes that lived through the run:")
    for pid, (name, kib) in sorted(first.items(), key=lambda kv: kv[1][0]):
        end = last.get(pid, 0)
        if end:
            growth = 100.0 * (end - kib) / kib
            print(f"  {name:12} {kib / 1024:7.1f} MiB -> {end / 1024:7.1f} MiB ({growth:+.1f}%),"
                  f" peak {peak[pid] / 1024:.1f} MiB")  # fmt: skip
        else:
            print(f"  {name:12} {kib / 1024:7.1f} MiB -> (killed or restarted by a fault)")
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
