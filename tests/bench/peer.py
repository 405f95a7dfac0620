"""What the peers (Celery, Dramatiq) share: their worker processes on one queue of the same
RabbitMQ, and a measured run that publishes from this process (as their clients would, with
no API in between) and waits until the workers have counted every task (``counts``)."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections.abc import Callable, Collection
from pathlib import Path

from tests.bench import BenchError, amqp, tails
from tests.bench.counts import COUNT_DIR, completed
from tests.bench.procstat import Probe
from tests.bench.report import Result
from tests.procs import Proc, check_alive, clean_env, start, stop_all

POLL_INTERVAL = 0.025


class PeerStack:
    """Subclasses give the worker commands (``commands``) and may prepare each run
    (``reset``); ``consumers`` is how many consumers the workers put on ``queue``."""

    def __init__(
        self,
        name: str,
        amqp_url: str,
        queue: str,
        consumers: int,
        env: dict[str, str],
        stall_seconds: float,
        log_dir: Path,
        databases: Collection[str] = (),
    ) -> None:
        self.name = name
        self.amqp_url = amqp_url
        self.queue = queue
        self.consumers = consumers
        self.stall_seconds = stall_seconds
        self.log_dir = log_dir
        self.count_dir = Path(tempfile.mkdtemp(prefix=f"jobqbench-{name}-counts-"))
        self.env = clean_env(
            {"JOBQBENCH_AMQP_URL": amqp_url, COUNT_DIR: str(self.count_dir), **env}
        )
        self.procs: list[Proc] = []
        self.probe = Probe(lambda: {"worker": [p.pid for p in self.procs]}, databases)

    def commands(self) -> list[list[str]]:
        raise NotImplementedError

    async def start(self) -> None:
        for i, argv in enumerate(self.commands()):
            self.procs.append(start(f"{self.name}-worker-{i + 1}", argv, self.env, self.log_dir))
        await amqp.wait_consumers(self.amqp_url, self.queue, self.consumers, self.procs)

    def stop(self) -> None:
        stop_all(self.procs)
        self.procs.clear()
        shutil.rmtree(self.count_dir, ignore_errors=True)

    async def reset(self) -> None:
        """Before a run: drop what an earlier one left in the queue."""
        purged = await amqp.purge(self.amqp_url, self.queue)
        if purged:
            print(f"  note: purged {purged} leftover {self.name} messages", flush=True)

    async def run(self, system: str, jobs: int, run: int, send: Callable[[], object]) -> Result:
        """``send`` publishes one task; it is called ``jobs`` times in a row."""
        await self.reset()
        before = completed(self.count_dir)
        cpu_before = self.probe.snapshot()
        t0 = time.perf_counter()
        for _ in range(jobs):
            send()
        t_enqueued = time.perf_counter()
        t_done = await self._drained(before + jobs)
        usage = self.probe.usage_since(cpu_before, jobs)
        return Result(system, run, jobs, t_enqueued - t0, t_done - t0, usage=usage)

    async def _drained(self, target: int) -> float:
        """Poll the counts until ``target``; returns that moment (``perf_counter``)."""
        seen, progressed = -1, time.monotonic()
        while True:
            done = completed(self.count_dir)
            now = time.perf_counter()
            if done >= target:
                if done > target:
                    print(f"  note: {self.name} ran {done - target} more than sent", flush=True)
                return now
            if done != seen:
                seen, progressed = done, time.monotonic()
            elif time.monotonic() - progressed > self.stall_seconds:
                raise BenchError(
                    f"{self.name} drain stalled {target - done} short\n{tails(self.procs)}"
                )
            check_alive(self.procs)
            await asyncio.sleep(POLL_INTERVAL)
