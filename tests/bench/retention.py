"""``python -m tests.bench.retention``: what deleting finished jobs costs the submit path.

Starts the api (2 processes), 2 workers and a scheduler that keeps everything, on a database
and broker prefix of their own; writes ``--rows`` finished jobs that are past their retention;
measures single submits from ``--clients`` closed-loop clients for ``--seconds`` (before); then
restarts the scheduler with the default retention and measures the same load in windows of
``--seconds`` until every old row is gone (during), and once more (after). Prints each phase's
submits/s and latency, and how fast the rows went. Figures, not assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import signal
import tempfile
import time
from pathlib import Path

import asyncpg

from shared.config import Settings
from shared.db.engine import make_engine
from tests.bench.loadgen import Tally, Target, closed_loop
from tests.chaos.cluster import Cluster
from tests.conftest import client_bearer
from tests.services import (
    broker_server,
    create_database,
    database_server,
    delete_broker_objects,
    drop_database,
    dsn,
)

SECRET = "bench-secret-" + "y" * 40
OLD = """
    INSERT INTO jobs (id, tenant, type, queue, payload, priority, status, attempts, max_attempts,
        timeout_seconds, run_at, dispatched_at, started_at, finished_at, result)
    SELECT gen_random_uuid(), 'bench', 'noop', 'default', 'null', 5, 'succeeded', 1, 3, 300,
        now() - interval '8 days', now() - interval '8 days', now() - interval '8 days',
        now() - interval '8 days', 'null'
    FROM generate_series(1, $1)
"""


async def window(target: Target, clients: int, seconds: float) -> Tally:
    """Closed-loop submits for about ``seconds`` (rounds of 50 per client until then)."""
    total = Tally()
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        part = await closed_loop(target, clients, clients * 50)
        total.latencies_ms += part.latencies_ms
        total.statuses.update(part.statuses)
        total.errors.update(part.errors)
    total.seconds = time.perf_counter() - t0
    return total


def line(name: str, tally: Tally) -> str:
    p50, p99, p999 = (tally.quantile(q) for q in (50, 99, 99.9))
    return (
        f"  {name:<7} {tally.rate():9,.0f} submits/s  p50 {p50 or 0:6.1f} ms  p99 {p99 or 0:7.1f} ms"
        f"  p99.9 {p999 or 0:7.1f} ms  ({tally.accepted():,} in {tally.seconds:.0f} s,"
        f" statuses {dict(tally.statuses)})"
    )


async def main(args: argparse.Namespace) -> None:
    with database_server() as server, broker_server() as amqp:
        url = await create_database(server, "jobq_bench_retention")
        prefix = f"jobqbenchr{secrets.token_hex(3)}"
        log_dir = Path(tempfile.mkdtemp(prefix="jobqbench-retention-"))
        cluster = Cluster(url, amqp, prefix, SECRET, log_dir)
        cluster.overrides |= {
            "JOBQ_API_PROCESSES": "2", "JOBQ_WORKER_CONCURRENCY": "64",
            "JOBQ_SUBMIT_RATE_PER_SECOND": "0", "JOBQ_SUBMIT_RATE_PER_TENANT": "0",
            "JOBQ_LEASE_SECONDS": "30", "JOBQ_REPUBLISH_AFTER_SECONDS": "30",
            "JOBQ_RETENTION_SUCCEEDED_SECONDS": "0",  # the first scheduler keeps everything
        }  # fmt: skip
        engine = make_engine(Settings(database_url=url), "bench", pool_size=1)
        conn = await asyncpg.connect(dsn(url))
        try:
            await cluster.up(workers=2, schedulers=1)
            signer = Settings(jwt_secret=SECRET, jwt_ttl_seconds=3600)
            bearer = (await client_bearer(engine, signer, "bench"))["Authorization"]
            target = Target.post(f"{cluster.url}/v1/jobs", b'{"type":"noop"}', bearer[7:])
            t = time.perf_counter()
            for written in range(0, args.rows, 100_000):
                await conn.execute(OLD, min(100_000, args.rows - written))
            await conn.execute("ANALYZE jobs")
            print(f"retention bench: {args.rows:,} finished rows written in"
                  f" {time.perf_counter() - t:.0f} s; logs in {log_dir}")  # fmt: skip
            old = "SELECT count(*) FROM jobs WHERE finished_at < now() - interval '7 days'"
            before = await window(target, args.clients, args.seconds)
            print(line("before", before), flush=True)

            [keeper] = cluster.of("scheduler")
            cluster.signal(keeper, signal.SIGTERM)
            started = time.perf_counter()
            await cluster.start(
                "scheduler", env={"JOBQ_RETENTION_SUCCEEDED_SECONDS": str(7 * 86400),
                                  "JOBQ_RETENTION_INTERVAL_SECONDS": "1"},
            )  # fmt: skip
            during = Tally()
            while (left := await conn.fetchval(old)) > 0:
                part = await window(target, args.clients, args.seconds)
                during.latencies_ms += part.latencies_ms
                during.statuses.update(part.statuses)
                during.seconds += part.seconds
                print(f"    {left:,} old rows left; {line('window', part).strip()}", flush=True)
            gone = time.perf_counter() - started
            print(line("during", during))
            print(f"  deleted {args.rows:,} rows in {gone:.0f} s: {args.rows / gone:,.0f} rows/s")
            print(line("after", await window(target, args.clients, args.seconds)))
        finally:
            await conn.close()
            await asyncio.to_thread(cluster.stop)
            await engine.dispose()
            await drop_database(url)
            await delete_broker_objects(amqp, prefix, ("default",))


if __name__ == "__main__":
    p = argparse.ArgumentParser(
        prog="python -m tests.bench.retention", description=__doc__.split("\n")[0]
    )
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--seconds", type=float, default=15.0)
    asyncio.run(main(p.parse_args()))
