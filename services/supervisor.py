"""``jobq up``: api, scheduler and N workers as supervised child processes, in the foreground.

A child that dies is restarted (with backoff if it keeps dying); SIGINT or SIGTERM stops every
child gracefully (SIGTERM, then SIGKILL after the grace period).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

RESTART_BACKOFF_MAX = 30.0
HEALTHY_AFTER = 30.0


@dataclass
class Child:
    name: str
    argv: list[str]
    #: File descriptors the child inherits (the API's listening socket).
    pass_fds: tuple[int, ...] = ()
    #: Variables set for this child on top of this process's environment.
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    backoff: float = 1.0
    restart_at: float = 0.0
    restarts: int = 0

    def start(self) -> None:
        env = {**os.environ, **self.env} if self.env else None
        self.proc = subprocess.Popen(self.argv, pass_fds=self.pass_fds, env=env)
        self.started = time.monotonic()


@dataclass
class Supervisor:
    children: list[Child]
    grace_seconds: float
    stopping: bool = field(default=False)

    def run(self) -> int:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)
        for child in self.children:
            child.start()
        while not self.stopping:
            self._reap()
            time.sleep(0.2)
        return self._stop_all()

    def _on_signal(self, signum: int, frame: object) -> None:
        self.stopping = True

    def _reap(self) -> None:
        now = time.monotonic()
        for child in self.children:
            if child.proc is None:
                if now >= child.restart_at:
                    child.restarts += 1
                    print(
                        f"jobq up: restarting {child.name} (restart {child.restarts})",
                        file=sys.stderr,
                        flush=True,
                    )
                    child.start()
                continue
            code = child.proc.poll()
            if code is None:
                if now - child.started > HEALTHY_AFTER:
                    child.backoff = 1.0
                continue
            print(
                f"jobq up: {child.name} exited with {code}; restarting in {child.backoff:.0f}s",
                file=sys.stderr,
                flush=True,
            )
            child.proc = None
            child.restart_at = now + child.backoff
            child.backoff = min(child.backoff * 2, RESTART_BACKOFF_MAX)

    def _stop_all(self) -> int:
        live = [c.proc for c in self.children if c.proc is not None and c.proc.poll() is None]
        for proc in live:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.grace_seconds + 5
        for proc in live:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return 0


def service_argv(service: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "services", service, *args]


def up(
    workers: int,
    grace_seconds: float,
    worker_args: list[str],
    api_args: list[str],
    worker_ports: list[int],
) -> int:
    """``worker_ports``: each worker's metrics and health port (``JOBQ_WORKER_METRICS_PORT``)."""
    children = [
        Child("api", service_argv("api", *api_args)),
        Child("scheduler", service_argv("scheduler")),
    ]
    children += [
        Child(
            f"worker-{i + 1}",
            service_argv("worker", *worker_args),
            env={"JOBQ_WORKER_METRICS_PORT": str(port)},
        )
        for i, port in zip(range(workers), worker_ports, strict=True)
    ]
    return Supervisor(children, grace_seconds).run()


def worker_ports(first: int, workers: int) -> list[int]:
    """One port each from ``first`` on, so workers on one host do not collide (0: all off)."""
    return [first + i if first else 0 for i in range(workers)]
