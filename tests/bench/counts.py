"""How the bench sees a peer's queue drain without asking it: every worker process counts the
tasks it finished (an increment under a lock: Dramatiq runs threads) and a daemon thread
writes that count to ``$JOBQBENCH_COUNT_DIR/<pid>`` whenever it changed, at most every
``WRITE_INTERVAL`` seconds. The bench sums the files; the counts only grow, so it compares
against the sum before a run. Imported by the peers' worker processes."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path

WRITE_INTERVAL = 0.025
COUNT_DIR = "JOBQBENCH_COUNT_DIR"


class FinishedCounter:
    def __init__(self) -> None:
        self.pid = 0
        self.count = 0
        self.lock = threading.Lock()

    def bump(self) -> None:
        with self.lock:
            if self.pid != os.getpid():  # first task in this (possibly forked) process
                self.pid = os.getpid()
                self.count = 0
                directory = os.environ.get(COUNT_DIR)
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


def completed(directory: Path) -> int:
    """The tasks finished so far by all worker processes that wrote into ``directory``."""
    total = 0
    for path in directory.iterdir():
        if not path.name.startswith("."):
            # A file replaced between listing and reading is counted by the next poll.
            with contextlib.suppress(OSError, ValueError):
                total += int(path.read_text() or 0)
    return total
