"""``python -m tests.bench [--quick] [--jobs N] [--runs R] …`` (``make bench BENCH_ARGS=…``).

Starts jobq (``migrate``, one ``api``, ``--workers`` x ``worker``) and the Celery baseline
(``--celery-workers`` x ``celery worker --pool=prefork --concurrency=1`` by default, the notes'
"prefork x2"), keeps them running, and measures R interleaved rounds of: jobq batch submit,
jobq single submits, Celery. Prints the medians and each run. Every child is stopped on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from tests.bench.celery_side import CeleryConfig, CeleryStack
from tests.bench.jobq_side import JobqConfig, JobqStack
from tests.bench.report import Result, render
from tests.procs import ProcessDied


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__.split("\n")[0])
    p.add_argument("--jobs", type=int, default=20000, help="jobs per batch/Celery run (20000)")
    p.add_argument("--single-jobs", type=int, default=5000, help="jobs per single run (5000)")
    p.add_argument("--runs", type=int, default=3, help="interleaved rounds; medians printed (3)")
    p.add_argument("--concurrency", type=int, default=256, help="per jobq worker (256)")
    p.add_argument("--workers", type=int, default=2, help="jobq worker processes (2)")
    p.add_argument("--batch-size", type=int, default=500, help="jobs per batch request (500)")
    p.add_argument("--in-flight", type=int, default=4, help="batch requests at once (4)")
    p.add_argument("--clients", type=int, default=64, help="single requests at once (64)")
    p.add_argument("--celery-workers", type=int, default=2, help="celery worker processes (2)")
    p.add_argument("--celery-pool", default="prefork", help="celery pool (prefork)")
    p.add_argument("--celery-concurrency", type=int, default=1, help="per celery worker (1)")
    p.add_argument("--warmup", type=int, default=500, help="unmeasured jobs per system first")
    p.add_argument("--stall", type=float, default=60.0, help="fail a drain idle this long (s)")
    p.add_argument(
        "--database-url",
        default="postgresql+asyncpg://postgres@127.0.0.1:5432/jobq_bench",
        help="dropped and created afresh",
    )
    p.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672/")
    p.add_argument("--broker-prefix", default="jobqbench")
    p.add_argument("--log-dir", type=Path, help="child logs (default: a new temp dir)")
    p.add_argument(
        "--systems",
        default="batch,single,celery",
        help="which to measure, comma-separated (batch,single,celery)",
    )
    p.add_argument("--quick", action="store_true", help="smoke: 2000 jobs, 500 single, 1 run")
    args = p.parse_args(argv)
    if args.quick:
        args.jobs, args.single_jobs, args.runs, args.warmup = 2000, 500, 1, min(args.warmup, 200)
    args.systems = {s.strip() for s in args.systems.split(",") if s.strip()}
    if not args.systems or not args.systems <= {"batch", "single", "celery"}:
        p.error("--systems takes some of batch,single,celery")
    for name in ("jobs", "single_jobs", "runs", "batch_size", "in_flight", "clients"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def header(args: argparse.Namespace) -> str:
    return "\n".join(
        [
            "jobq benchmark: no-op jobs, e2e = jobs / (first submit .. last job finished)",
            f"  N={args.jobs} (batch, celery)  N_single={args.single_jobs}  runs={args.runs}"
            f"  warmup={args.warmup}  systems={','.join(sorted(args.systems))}",
            f"  jobq: 1 api + {args.workers} workers x concurrency {args.concurrency};"
            f" batch {args.batch_size} jobs x {args.in_flight} in flight;"
            f" single: {args.clients} concurrent clients",
            f"  celery: {args.celery_workers} workers x --pool={args.celery_pool}"
            f" --concurrency={args.celery_concurrency}; acks_late, persistent, json,"
            " no result backend, no publisher confirms",
            f"  machine: {os.cpu_count()} cpus, python {platform.python_version()}",
        ]
    )


def progress(r: Result) -> str:
    latency = "" if r.p50_ms is None else f", p50 {r.p50_ms:.1f} ms, p99 {r.p99_ms or 0:.1f} ms"
    return (
        f"run {r.run} {r.system:<11} {r.jobs} jobs: enqueue {r.enqueue_rate:,.0f}/s,"
        f" e2e {r.e2e_rate:,.0f}/s ({r.total_seconds:.2f} s){latency}"
    )


async def bench(args: argparse.Namespace, log_dir: Path, results: list[Result]) -> None:
    """Start both systems, measure into ``results`` (kept when a later run fails), stop."""
    jobq = JobqStack(
        JobqConfig(
            database_url=args.database_url,
            amqp_url=args.amqp_url,
            broker_prefix=args.broker_prefix,
            workers=args.workers,
            concurrency=args.concurrency,
            stall_seconds=args.stall,
        ),
        log_dir,
    )
    celery = CeleryStack(
        CeleryConfig(
            amqp_url=args.amqp_url,
            workers=args.celery_workers,
            pool=args.celery_pool,
            concurrency=args.celery_concurrency,
            stall_seconds=args.stall,
        ),
        log_dir,
    )

    def record(r: Result) -> None:
        results.append(r)
        print(progress(r), flush=True)

    try:
        print("starting jobq and celery ...", flush=True)
        use_jobq = bool(args.systems & {"batch", "single"})
        if use_jobq:
            await jobq.start()
        if "celery" in args.systems:
            await celery.start()
        if args.warmup:
            print(f"warmup: {args.warmup} jobs each", flush=True)
            if use_jobq:
                await jobq.run_batch(args.warmup, args.batch_size, args.in_flight, 0)
            if "celery" in args.systems:
                await celery.run(args.warmup, 0)
        for run in range(1, args.runs + 1):
            if "batch" in args.systems:
                record(await jobq.run_batch(args.jobs, args.batch_size, args.in_flight, run))
            if "single" in args.systems:
                record(await jobq.run_single(args.single_jobs, args.clients, run))
            if "celery" in args.systems:
                record(await celery.run(args.jobs, run))
    finally:
        await jobq.close()
        jobq.stop()
        celery.stop()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="jobqbench-logs-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    print(header(args), flush=True)
    print(f"  child logs: {log_dir}", flush=True)
    started = time.monotonic()
    results: list[Result] = []
    code = 0
    try:
        asyncio.run(bench(args, log_dir, results))
    except ProcessDied as exc:
        print(f"\nbench failed at {time.strftime('%H:%M:%S')}: {exc}", file=sys.stderr, flush=True)
        code = 1
    except KeyboardInterrupt:
        code = 130
    if results:
        runs = len({r.run for r in results})
        what = "medians" if code == 0 else "INCOMPLETE (the bench failed): medians"
        elapsed = time.monotonic() - started
        print(f"\n{what} of {runs} run(s) ({elapsed:.0f} s in all):\n")
        print(render(results))
    return code


if __name__ == "__main__":
    sys.exit(main())
