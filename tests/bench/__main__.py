"""``python -m tests.bench [--quick] [--jobs N] [--runs R] …`` (``make bench BENCH_ARGS=…``).

Starts jobq (``migrate``, ``api --processes 2``, ``scheduler``, ``--workers`` x ``worker``)
and its peers on the same RabbitMQ: Celery lean (no result backend) and Celery with a
PostgreSQL result backend (each ``--celery-workers`` x ``celery worker --pool=prefork
--concurrency=1``), Dramatiq (``--dramatiq-processes`` x ``--dramatiq-threads``), published
without and with publisher confirms. Keeps them all running and measures R interleaved
rounds of: jobq batch submits, jobq single submits (closed loop), jobq single submits offered
at each of ``--rates`` (open loop, with due-to-start latencies), then each peer. Prints the
medians, each run, the ratios to each peer, CPU per job by process and RSS. Every child is
stopped on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from tests.bench import pg
from tests.bench.celery_side import CeleryConfig, CeleryStack
from tests.bench.dramatiq_side import DramatiqConfig, DramatiqStack
from tests.bench.jobq_side import JobqConfig, JobqStack
from tests.bench.report import CELERY, CELERY_PG, FairPoint, OpenLoop, Result, render
from tests.procs import ProcessDied

#: What ``--systems`` takes, in the order each round measures them.
PHASES = (
    "batch", "batch-nometrics", "batch-fair-off", "batch-keys", "single", "open", "fairness",
    "celery", "celery-pg", "dramatiq", "dramatiq-confirm",
)  # fmt: skip


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__.split("\n")[0])
    p.add_argument("--jobs", type=int, default=20000, help="jobs per batch/peer run (20000)")
    p.add_argument("--single-jobs", type=int, default=5000, help="jobs per single run (5000)")
    p.add_argument("--runs", type=int, default=3, help="interleaved rounds; medians printed (3)")
    p.add_argument("--concurrency", type=int, default=256, help="per jobq worker (256)")
    p.add_argument("--workers", type=int, default=2, help="jobq worker processes (2)")
    p.add_argument("--api-processes", type=int, default=2, help="jobq api processes (2)")
    p.add_argument("--batch-size", type=int, default=500, help="jobs per batch request (500)")
    p.add_argument("--in-flight", type=int, default=4, help="batch requests at once (4)")
    p.add_argument("--clients", type=int, default=64, help="closed loop: single clients (64)")
    p.add_argument(
        "--rates",
        default="200,500,1000,2000",
        help="open loop: offered requests/s, comma-separated",
    )
    p.add_argument("--open-seconds", type=float, default=10.0, help="open loop: per rate (10)")
    p.add_argument("--victim-rate", type=float, default=50.0, help="fairness: victim jobs/s (50)")
    p.add_argument("--flood-factor", type=int, default=10, help="fairness: flood x victim (10)")
    p.add_argument("--flood-seconds", type=float, default=10.0, help="fairness: offered for (10)")
    p.add_argument(
        "--flood-job-seconds", type=float, default=2.0, help="fairness: each job sleeps (2)"
    )
    p.add_argument("--celery-workers", type=int, default=2, help="celery worker processes (2)")
    p.add_argument("--celery-pool", default="prefork", help="celery pool (prefork)")
    p.add_argument("--celery-concurrency", type=int, default=1, help="per celery worker (1)")
    p.add_argument("--dramatiq-processes", type=int, default=2, help="dramatiq processes (2)")
    p.add_argument("--dramatiq-threads", type=int, default=8, help="per dramatiq process (8)")
    p.add_argument("--warmup", type=int, default=500, help="unmeasured jobs per system first")
    p.add_argument("--stall", type=float, default=60.0, help="fail a drain idle this long (s)")
    p.add_argument(
        "--database-url",
        default="postgresql+asyncpg://postgres@127.0.0.1:5432/jobq_bench",
        help="jobq's; Celery's results go to <database>_celery; both dropped and created afresh",
    )
    p.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672/")
    p.add_argument("--broker-prefix", default="jobqbench", help="of every queue the bench uses")
    p.add_argument("--log-dir", type=Path, help="child logs (default: a new temp dir)")
    p.add_argument(
        "--systems", default=",".join(PHASES), help="which to measure, comma-separated (all)"
    )
    p.add_argument(
        "--quick", action="store_true", help="smoke: 2000 jobs, 500 single, 2 s per rate, 1 run"
    )
    args = p.parse_args(argv)
    if args.quick:
        args.jobs, args.single_jobs, args.runs = 2000, 500, 1
        args.warmup, args.open_seconds = min(args.warmup, 200), min(args.open_seconds, 2.0)
        args.flood_seconds = min(args.flood_seconds, 2.0)
    args.systems = {s.strip() for s in args.systems.split(",") if s.strip()}
    if not args.systems or not args.systems <= set(PHASES):
        p.error(f"--systems takes some of {','.join(PHASES)}")
    try:
        args.rates = sorted({float(r) for r in args.rates.split(",") if r.strip()})
    except ValueError:
        p.error("--rates takes numbers, comma-separated")
    if not args.rates or min(args.rates) <= 0:
        p.error("--rates takes positive numbers")
    for name in ("jobs", "single_jobs", "runs", "batch_size", "in_flight", "clients"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def header(args: argparse.Namespace) -> str:
    rates = ", ".join(f"{r:g}" for r in args.rates)
    return "\n".join(
        [
            "jobq benchmark: no-op jobs, e2e = jobs / (first submit .. last job finished)",
            f"  N={args.jobs} (batch, peers)  N_single={args.single_jobs}  runs={args.runs}"
            f"  warmup={args.warmup}  systems={','.join(p for p in PHASES if p in args.systems)}",
            f"  jobq: {args.api_processes} api processes, scheduler, {args.workers} workers x"
            f" concurrency {args.concurrency}; batch {args.batch_size} jobs x {args.in_flight}"
            f" in flight (httpx); single: {args.clients} closed-loop clients (loadgen);"
            f" open loop: {rates} req/s offered for {args.open_seconds:g} s each",
            f"  celery: {args.celery_workers} workers x --pool={args.celery_pool}"
            f" --concurrency={args.celery_concurrency}; acks_late, persistent, json, no publisher"
            " confirms; lean: no result backend; +pg: results stored in PostgreSQL (psycopg)",
            f"  dramatiq: {args.dramatiq_processes} processes x {args.dramatiq_threads} threads,"
            " RabbitmqBroker defaults; +confirm: publisher confirms",
            "  peers publish from the bench process itself (no API in between); jobq is"
            " submitted to over HTTP from the same process",
            f"  fairness: a victim tenant offers {args.victim_rate:g} sleep({args.flood_job_seconds:g} s)"
            f" jobs/s for {args.flood_seconds:g} s, alone and beside a flood tenant offering"
            f" {args.flood_factor}x as many (batches, 10/s); fair dispatch on (JOBQ_FAIR_DEPTH"
            " default) and off (a second jobq, JOBQ_FAIR_DEPTH=0, which also runs batch-fair-off)",
            f"  machine: {os.cpu_count()} cpus, python {platform.python_version()}",
        ]
    )


def progress(r: Result) -> str:
    latency = "" if r.p50_ms is None else f", p50 {r.p50_ms:.1f} ms, p99 {r.p99_ms or 0:.1f} ms"
    return (
        f"run {r.run} {r.system:<16} {r.jobs} jobs: enqueue {r.enqueue_rate:,.0f}/s,"
        f" e2e {r.e2e_rate:,.0f}/s ({r.total_seconds:.2f} s){latency}"
    )


def progress_open(p: OpenLoop) -> str:
    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    return (
        f"run {p.run} jobq open {p.offered:>6,.0f}/s: {p.accepted_rate:,.0f} accepted/s,"
        f" p50 {ms(p.p50_ms)} p99 {ms(p.p99_ms)} p99.9 {ms(p.p999_ms)} ms,"
        f" due-to-start p50 {ms(p.due_p50_ms)} p99 {ms(p.due_p99_ms)} ms"
        + (f", refused {dict(p.refused)}" if p.refused else "")
        + (f", no answer {dict(p.errors)}" if p.errors else "")
    )


def progress_fair(p: FairPoint) -> str:
    flood = f"beside a {p.flood}x flood ({p.flood_jobs} jobs)" if p.flood else "alone"
    return (
        f"run {p.run} fairness {'on' if p.fair else 'off'}: victim {p.victim_jobs} jobs {flood},"
        f" due-to-start p50 {p.due_p50_ms or 0:.0f} ms p99 {p.due_p99_ms or 0:.0f} ms"
    )


async def bench(
    args: argparse.Namespace,
    log_dir: Path,
    results: list[Result],
    points: list[OpenLoop],
    fair_points: list[FairPoint],
) -> None:
    """Start every system measured, measure into ``results`` and ``points`` (kept when a
    later run fails), stop."""
    want = args.systems
    prefix = args.broker_prefix
    config = JobqConfig(
        database_url=args.database_url,
        amqp_url=args.amqp_url,
        broker_prefix=prefix,
        api_processes=args.api_processes,
        workers=args.workers,
        concurrency=args.concurrency,
        stall_seconds=args.stall,
    )
    jobq = JobqStack(config, log_dir)
    # The same system with JOBQ_METRICS=false, on a database and broker prefix of its own.
    uncounted = JobqStack(
        dataclasses.replace(
            config, metrics=False, broker_prefix=f"{prefix}nm",
            database_url=pg.respell(
                args.database_url, database=f"{pg.database_of(args.database_url)}_nometrics"
            ),
        ),
        log_dir,
    )  # fmt: skip
    # Fair dispatch off (JOBQ_FAIR_DEPTH=0), on a database and broker prefix of its own.
    unfair = JobqStack(
        dataclasses.replace(
            config, fair_depth=0, broker_prefix=f"{prefix}nf",
            database_url=pg.respell(
                args.database_url, database=f"{pg.database_of(args.database_url)}_fairoff"
            ),
        ),
        log_dir,
    )  # fmt: skip
    results_url = pg.respell(
        args.database_url, database=f"{pg.database_of(args.database_url)}_celery"
    )
    celeries = {
        phase: CeleryStack(
            system,
            CeleryConfig(
                amqp_url=args.amqp_url,
                queue=f"{prefix}.{phase}",
                workers=args.celery_workers,
                pool=args.celery_pool,
                concurrency=args.celery_concurrency,
                stall_seconds=args.stall,
                results_url=results_url if phase == "celery-pg" else None,
            ),
            log_dir,
        )
        for phase, system in (("celery", CELERY), ("celery-pg", CELERY_PG))
        if phase in want
    }
    dramatiq = DramatiqStack(
        DramatiqConfig(
            amqp_url=args.amqp_url,
            queue=f"{prefix}.dramatiq",
            processes=args.dramatiq_processes,
            threads=args.dramatiq_threads,
            stall_seconds=args.stall,
        ),
        log_dir,
    )
    use_jobq = bool(want & {"batch", "batch-keys", "single", "open", "fairness"})
    use_uncounted = "batch-nometrics" in want
    use_unfair = bool(want & {"batch-fair-off", "fairness"})
    use_dramatiq = bool(want & {"dramatiq", "dramatiq-confirm"})

    def record(r: Result) -> None:
        results.append(r)
        print(progress(r), flush=True)

    async def round_(run: int, jobs: int, single_jobs: int) -> None:
        """One round of every phase; run 0 is the warmup, recorded nowhere."""
        keep = record if run else (lambda r: None)
        if "batch" in want:
            keep(await jobq.run_batch(jobs, args.batch_size, args.in_flight, run))
        if use_uncounted:
            keep(await uncounted.run_batch(jobs, args.batch_size, args.in_flight, run))
        if "batch-fair-off" in want:
            keep(await unfair.run_batch(jobs, args.batch_size, args.in_flight, run))
        if "batch-keys" in want:
            keep(await jobq.run_batch(jobs, args.batch_size, args.in_flight, run, keys=100))
        if "single" in want:
            keep(await jobq.run_single(single_jobs, args.clients, run))
        if "open" in want and run:
            for rate in args.rates:
                points.append(await jobq.run_open(rate, args.open_seconds, run))
                print(progress_open(points[-1]), flush=True)
        if "fairness" in want and run:
            for stack, factor in (
                (jobq, 0),
                (jobq, args.flood_factor),
                (unfair, args.flood_factor),
            ):
                fair_points.append(
                    await stack.run_flood(
                        args.victim_rate, args.flood_seconds, factor, args.flood_job_seconds, run
                    )
                )
                print(progress_fair(fair_points[-1]), flush=True)
        for celery in celeries.values():
            keep(await celery.measure(jobs, run))
        for confirm in (False, True):
            if ("dramatiq-confirm" if confirm else "dramatiq") in want:
                keep(await dramatiq.measure(jobs, run, confirm))

    try:
        print("starting " + ", ".join(sorted(want)) + " ...", flush=True)
        if use_jobq:
            await jobq.start()
        if use_uncounted:
            await uncounted.start()
        if use_unfair:
            await unfair.start()
        for celery in celeries.values():
            await celery.start()
        if use_dramatiq:
            await dramatiq.start()
        if args.warmup:
            print(f"warmup: {args.warmup} jobs each", flush=True)
            await round_(0, args.warmup, args.warmup)
        for run in range(1, args.runs + 1):
            await round_(run, args.jobs, args.single_jobs)
    finally:
        for stack in (jobq, uncounted, unfair):
            await stack.close()
            stack.stop()
        for celery in celeries.values():
            celery.stop()
        dramatiq.stop()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="jobqbench-logs-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    print(header(args), flush=True)
    print(f"  child logs: {log_dir}", flush=True)
    started = time.monotonic()
    results: list[Result] = []
    points: list[OpenLoop] = []
    fair_points: list[FairPoint] = []
    code = 0
    try:
        asyncio.run(bench(args, log_dir, results, points, fair_points))
    except ProcessDied as exc:
        print(f"\nbench failed at {time.strftime('%H:%M:%S')}: {exc}", file=sys.stderr, flush=True)
        code = 1
    except KeyboardInterrupt:
        code = 130
    if results or points or fair_points:
        what = "" if code == 0 else "INCOMPLETE (the bench failed): "
        print(f"\n{what}{time.monotonic() - started:.0f} s in all\n")
        print(render(results, points, fair_points))
    return code


if __name__ == "__main__":
    sys.exit(main())
