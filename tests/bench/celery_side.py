"""The Celery baseline: ``celery -A tests.bench.celery_app worker`` processes on the same
RabbitMQ; tasks sent with ``apply_async`` from this process; drain read from the workers'
per-process counters (see ``celery_app``)."""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.bench import BenchError, amqp, celery_app
from tests.bench.report import CELERY, Result
from tests.procs import Proc, check_alive, clean_env, start, stop_all

POLL_INTERVAL = 0.025


@dataclass(frozen=True)
class CeleryConfig:
    amqp_url: str
    #: Worker processes (``celery worker`` commands) and the pool each one runs.
    workers: int
    pool: str
    concurrency: int
    stall_seconds: float


class CeleryStack:
    def __init__(self, config: CeleryConfig, log_dir: Path) -> None:
        self.config = config
        self.log_dir = log_dir
        self.count_dir = Path(tempfile.mkdtemp(prefix="jobqbench-celery-counts-"))
        self.env = clean_env(
            {"JOBQBENCH_AMQP_URL": config.amqp_url, "JOBQBENCH_COUNT_DIR": str(self.count_dir)}
        )
        self.procs: list[Proc] = []
        # This process only publishes; the app must use the workers' broker.
        celery_app.app.conf.broker_url = config.amqp_url

    async def start(self) -> None:
        cfg = self.config
        await amqp.delete(cfg.amqp_url, [celery_app.QUEUE], [celery_app.QUEUE])
        for i in range(cfg.workers):
            argv = [
                *(sys.executable, "-m", "celery", "-A", "tests.bench.celery_app", "worker"),
                f"--pool={cfg.pool}",
                f"--concurrency={cfg.concurrency}",
                *("--without-heartbeat", "--without-gossip", "--without-mingle"),
                *("-Q", celery_app.QUEUE, "--loglevel=warning", "-n", f"bench{i + 1}@%h"),
            ]
            self.procs.append(start(f"celery-worker-{i + 1}", argv, self.env, self.log_dir))
        deadline = time.monotonic() + 60
        state: tuple[int, int] | None = None
        while time.monotonic() < deadline:
            check_alive(self.procs)
            state = await amqp.queue_state(cfg.amqp_url, celery_app.QUEUE)
            if state is not None and state[1] >= cfg.workers:
                return
            await asyncio.sleep(0.1)
        raise BenchError(f"{cfg.workers} celery workers not consuming {celery_app.QUEUE}: {state}")

    def stop(self) -> None:
        stop_all(self.procs)
        self.procs.clear()
        shutil.rmtree(self.count_dir, ignore_errors=True)

    async def run(self, jobs: int, run: int) -> Result:
        purged = await amqp.purge(self.config.amqp_url, celery_app.QUEUE)
        if purged:
            print(f"  note: purged {purged} leftover celery messages", flush=True)
        before = celery_app.completed(self.count_dir)
        task = celery_app.noop_task
        t0 = time.perf_counter()
        for _ in range(jobs):
            task.apply_async()
        t_enqueued = time.perf_counter()
        target, seen, progressed = before + jobs, -1, time.monotonic()
        while True:
            done = celery_app.completed(self.count_dir)
            now = time.perf_counter()
            if done >= target:
                break
            if done != seen:
                seen, progressed = done, time.monotonic()
            elif time.monotonic() - progressed > self.config.stall_seconds:
                tails = "\n".join(f"--- {p.name}:\n{p.tail(15)}" for p in self.procs)
                raise BenchError(f"celery drain stalled at {done - before}/{jobs}\n{tails}")
            check_alive(self.procs)
            await asyncio.sleep(POLL_INTERVAL)
        if done > target:
            print(f"  note: celery ran {done - target} more tasks than sent", flush=True)
        return Result(CELERY, run, jobs, t_enqueued - t0, now - t0)
