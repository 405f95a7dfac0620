"""Child processes: started in their own session with an explicit environment and a log file,
stopped with SIGTERM to their process group, then SIGKILL after a grace period."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


class ProcessDied(Exception):
    """A child exited that nobody stopped (the benchmark cannot measure; a test fails)."""


class Proc:
    """One started child, its output captured in ``log``."""

    def __init__(self, name: str, popen: subprocess.Popen[bytes], log: Path) -> None:
        self.name = name
        self.popen = popen
        self.log = log

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError as exc:
            return f"(cannot read {self.log}: {exc})"
        return "\n".join(text.splitlines()[-lines:])


def start(
    name: str, argv: Sequence[str], env: Mapping[str, str], log_dir: Path, cwd: Path = REPO_ROOT
) -> Proc:
    """Start ``argv`` in a new session (so a Ctrl-C at the terminal reaches only the owner,
    which then stops its children in order), stdout and stderr to ``<log_dir>/<name>.log``."""
    log = log_dir / f"{name}.log"
    with log.open("ab") as out:
        popen = subprocess.Popen(
            list(argv),
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Proc(name, popen, log)


def _signal_group(proc: Proc, sig: signal.Signals) -> None:
    # The child leads its own process group (start_new_session), so this reaches the
    # processes it forked (Celery's prefork children) and nothing else.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def stop_all(procs: Sequence[Proc], grace: float = 15.0) -> None:
    """SIGTERM every process group, wait up to ``grace`` seconds in total, SIGKILL the rest."""
    for proc in procs:
        if not proc.alive():  # worth knowing: something else may be killing processes
            print(
                f"  note: {proc.name} (pid {proc.pid}) had already exited with "
                f"{proc.popen.returncode}",
                file=sys.stderr,
            )
        _signal_group(proc, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
    for proc in procs:
        # Also reaps a group whose leader exited but left children behind.
        _signal_group(proc, signal.SIGKILL)
        if proc.popen.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=5)


def check_alive(procs: Sequence[Proc]) -> None:
    """Raise ``ProcessDied`` with the log tail of the first child that has exited."""
    for proc in procs:
        if not proc.alive():
            code = proc.popen.returncode
            how = (
                f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with {code}"
            )
            raise ProcessDied(
                f"{proc.name} (pid {proc.pid}) {how} (not by its owner); "
                f"last lines of {proc.log}:\n{proc.tail()}"
            )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(extra: Mapping[str, str]) -> dict[str, str]:
    """The caller's environment without any ``JOBQ_*``/``OTEL_*`` (the Makefile exports
    ``JOBQ_JWT_SECRET_FILE``), plus ``extra``. Workers' and schedulers' metrics ports are off
    unless ``extra`` gives them (the defaults would collide between processes on one host)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JOBQ_", "OTEL_"))}
    env |= {"JOBQ_WORKER_METRICS_PORT": "0", "JOBQ_SCHEDULER_METRICS_PORT": "0"}
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p
    )
    env.update(extra)
    return env
