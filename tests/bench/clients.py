"""``python -m tests.bench.clients``: what the client side costs, on jobq's real api.

1. The SDK's submit against a bare httpx call with a ready token: N sequential single submits
   each way, interleaved in ``--runs`` rounds; per-submit latency (median, p99) and the client
   process's CPU per submit.
2. HTTP workers: M jobs submitted first to a queue no AMQP worker reads, then drained by 1 and
   by 4 worker processes, each a ``jobq.HttpWorker`` (concurrency 16) running a no-op handler;
   jobs/s from the first lease to the last completion.

It starts the api (``--api-processes``) and the scheduler on a database and broker prefix of
their own (dropped after). Figures, not assertions: compare them within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import jobq

from shared.config import Settings
from shared.db.clients import ClientStore
from shared.db.engine import make_engine
from tests.chaos.cluster import Cluster
from tests.services import (
    broker_server,
    create_database,
    database_server,
    delete_broker_objects,
    drop_database,
)

SECRET = "bench-secret-" + "x" * 40


@jobq.handler("bench.noop")
async def noop(payload: object) -> None:
    """The HTTP workers' job."""


def http_worker(url: str, client_id: str, secret: str, queue: str) -> None:
    """One worker process: lease and run until SIGTERM."""

    async def go() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        async with jobq.AsyncClient(url=url, client_id=client_id, client_secret=secret) as c:
            worker = jobq.HttpWorker(c, [noop], queues=[queue], concurrency=16, wait_seconds=1)
            await worker.run(stop)

    asyncio.run(go())


def cpu() -> float:
    t = os.times()
    return t.user + t.system


def submits(url: str, creds: jobq.Credentials, n: int) -> dict[str, tuple[float, float, float]]:
    """(median ms, p99 ms, client CPU ms per submit) for the SDK and for raw httpx."""
    out: dict[str, tuple[float, float, float]] = {}
    with jobq.Client(creds) as client, httpx.Client(base_url=url) as raw:
        token = client.token()
        headers = {"Authorization": f"Bearer {token}"}

        def sdk() -> None:
            client.submit("bench.noop", {"n": 1}, queue="bench-submit", delay=3600)

        def bare() -> None:
            r = raw.post(
                "/v1/jobs", json={"type": "bench.noop", "payload": {"n": 1}, "queue": "bench-submit",
                                  "delay_seconds": 3600},
                headers={**headers, "Idempotency-Key": secrets.token_hex(8)},
            )  # fmt: skip
            r.raise_for_status()

        for name, call in (("httpx", bare), ("sdk", sdk)):
            call()  # connections and the token in place
            times = []
            start_cpu = cpu()
            for _ in range(n):
                t0 = time.perf_counter()
                call()
                times.append((time.perf_counter() - t0) * 1000)
            used = (cpu() - start_cpu) * 1000 / n
            times.sort()
            out[name] = (statistics.median(times), times[int(0.99 * (len(times) - 1))], used)
    return out


def drain(url: str, creds: jobq.Credentials, jobs: int, workers: int, log_dir: Path) -> float:
    queue = "bench-http"
    with jobq.Client(creds) as client:
        done_before = _succeeded(client, queue)
        for start in range(0, jobs, 1000):
            client.submit_many([{"type": "bench.noop", "queue": queue}] * min(1000, jobs - start))
        argv = [sys.executable, "-m", "tests.bench.clients", "--http-worker", url,
                creds.client_id, creds.client_secret, queue]  # fmt: skip
        procs = [_start(argv, log_dir / f"http-worker-{i}.log") for i in range(workers)]
        deadline = time.monotonic() + 600
        while _succeeded(client, queue) < done_before + jobs:
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError(f"the HTTP workers did not drain {queue}: see {log_dir}")
            time.sleep(0.2)
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)
        # Up to the last completion, not the workers' idle wait at the end.
        ran = _first(client.list(queue=queue, page_size=500), jobs)  # this round's, newest first
        last = max(j.finished_at for j in ran if j.finished_at)
        first = min(j.started_at for j in ran if j.started_at)
    return jobs / (last - first).total_seconds()


def _start(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("w") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)


def _first(jobs: Iterator[jobq.Job], n: int) -> list[jobq.Job]:
    return [j for _, j in zip(range(n), jobs, strict=False)]


def _succeeded(client: jobq.Client, queue: str) -> int:
    return next((q.counts.get("succeeded", 0) for q in client.queues() if q.name == queue), 0)


async def main(args: argparse.Namespace) -> None:
    with database_server() as server, broker_server() as amqp:
        url = await create_database(server, "jobq_bench_clients")
        prefix = f"jobqbenchc{secrets.token_hex(3)}"
        log_dir = Path(tempfile.mkdtemp(prefix="jobqbench-clients-"))
        cluster = Cluster(url, amqp, prefix, SECRET, log_dir)
        cluster.overrides |= {
            "JOBQ_QUEUES": "bench-submit,bench-http",
            "JOBQ_API_PROCESSES": str(args.api_processes),
            "JOBQ_SUBMIT_RATE_PER_SECOND": "100000", "JOBQ_SUBMIT_BURST": "100000",
            "JOBQ_SUBMIT_RATE_PER_TENANT": "100000", "JOBQ_SUBMIT_BURST_PER_TENANT": "100000",
        }  # fmt: skip
        engine = make_engine(Settings(database_url=url), "bench", pool_size=1)
        try:
            await cluster.up(workers=0, schedulers=1)
            client, secret = await ClientStore(engine).register(
                "bench", "bench", ["jobs:write", "jobs:read", "jobs:work"]
            )
            creds = jobq.Credentials(cluster.url, str(client.id), secret)
            print(f"clients bench: api x{args.api_processes}, logs in {log_dir}")
            rounds = [await asyncio.to_thread(submits, cluster.url, creds, args.submits)
                      for _ in range(args.runs)]  # fmt: skip
            print(
                f"\nsingle submits, sequential, {args.submits} per way, {args.runs} rounds (medians):"
            )
            print("  client   p50 ms   p99 ms   client cpu ms/submit")
            for name in ("httpx", "sdk"):
                p50, p99, used = (statistics.median(r[name][i] for r in rounds) for i in range(3))
                print(f"  {name:<6} {p50:8.2f} {p99:8.2f} {used:12.3f}")
            print(f"\nHTTP workers draining {args.jobs} no-op jobs (jobs/s, {args.runs} rounds):")
            for workers in (1, 4):
                rates = [await asyncio.to_thread(drain, cluster.url, creds, args.jobs, workers, log_dir)
                         for _ in range(args.runs)]  # fmt: skip
                each = " / ".join(f"{r:,.0f}" for r in rates)
                print(
                    f"  {workers} worker(s) x concurrency 16: {statistics.median(rates):,.0f} ({each})"
                )
        finally:
            await asyncio.to_thread(cluster.stop)
            await engine.dispose()
            await drop_database(url)
            await delete_broker_objects(amqp, prefix, ("default", "bench-submit", "bench-http"))


if __name__ == "__main__":
    p = argparse.ArgumentParser(
        prog="python -m tests.bench.clients", description=__doc__.split("\n")[0]
    )
    p.add_argument("--submits", type=int, default=1000)
    p.add_argument("--jobs", type=int, default=3000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--api-processes", type=int, default=2)
    p.add_argument("--http-worker", nargs=4, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.http_worker:
        http_worker(*a.http_worker)
    else:
        asyncio.run(main(a))
