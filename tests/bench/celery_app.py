"""The Celery baseline: one no-op task on a durable queue of the same RabbitMQ, acks late,
persistent messages, JSON, no result backend (``celery -A tests.bench.celery_app worker``).

Drain detection without a result backend: every worker process counts finished tasks in the
``task_postrun`` signal (an integer increment) and a daemon thread writes that count to
``$JOBQBENCH_COUNT_DIR/<pid>`` whenever it changed, at most every ``WRITE_INTERVAL`` seconds.
The bench sums the files; the counts only grow, so it compares against the sum before a run.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path
from typing import Any

from celery import Celery
from celery.signals import task_postrun

QUEUE = "jobqbench.celery"
TASK = "jobqbench.noop"
WRITE_INTERVAL = 0.025

app = Celery(
    "jobqbench", broker=os.environ.get("JOBQBENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
)
app.conf.update(
    task_acks_late=True,
    task_ignore_result=True,
    result_backend=None,
    task_serializer="json",
    accept_content=["json"],
    task_default_queue=QUEUE,
    task_default_delivery_mode="persistent",
    worker_prefetch_multiplier=4,  # Celery's default, stated
    worker_enable_remote_control=False,
    worker_send_task_events=False,
    broker_connection_retry_on_startup=True,
)


def noop() -> None:
    """Does nothing, like jobq's built-in ``noop``."""


noop_task: Any = app.task(name=TASK)(noop)


class _Counter:
    def __init__(self) -> None:
        self.pid = 0
        self.count = 0

    def bump(self) -> None:
        if self.pid != os.getpid():  # first task in this (possibly forked) process
            self.pid = os.getpid()
            self.count = 0
            directory = os.environ.get("JOBQBENCH_COUNT_DIR")
            if directory:
                threading.Thread(
                    target=self._write_loop, args=(Path(directory), self.pid), daemon=True
                ).start()
        self.count += 1

    def _write_loop(self, directory: Path, pid: int) -> None:
        path, tmp = directory / str(pid), directory / f".{pid}.tmp"
        written = -1
        while True:
            count = self.count
            if count != written:
                tmp.write_text(str(count))
                tmp.replace(path)  # readers never see a half-written file
                written = count
            time.sleep(WRITE_INTERVAL)


_counter = _Counter()


def _on_postrun(**_: Any) -> None:
    _counter.bump()


task_postrun.connect(_on_postrun, weak=False)


def completed(directory: Path) -> int:
    """The tasks finished so far by all worker processes that wrote into ``directory``."""
    total = 0
    for path in directory.iterdir():
        if not path.name.startswith("."):
            # A file replaced between listing and reading is counted by the next poll.
            with contextlib.suppress(OSError, ValueError):
                total += int(path.read_text() or 0)
    return total
