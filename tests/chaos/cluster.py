"""The system under test as real processes: one api, workers and schedulers, started with
``python -m services <service>`` against the test's database and broker prefix."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx

from tests.procs import Proc, clean_env, free_port, start, stop_all
from tests.services import create_database, delete_broker_objects, drop_database, dsn

#: Short leases and intervals, so a fault is detected and recovered within seconds.
FAST = {
    "JOBQ_LEASE_SECONDS": "2",
    "JOBQ_REPUBLISH_AFTER_SECONDS": "2",
    "JOBQ_LOST_TICKET_AFTER_SECONDS": "4",
    "JOBQ_SCHEDULER_INTERVAL_SECONDS": "0.25",
    "JOBQ_SHUTDOWN_GRACE_SECONDS": "5",
    "JOBQ_RETRY_BACKOFF_SECONDS": "0.2",
    "JOBQ_RETRY_BACKOFF_MAX_SECONDS": "1",
    "JOBQ_WORKER_CONCURRENCY": "4",
    "JOBQ_DB_TIMEOUT_SECONDS": "3",
    "JOBQ_PUBLISH_TIMEOUT_SECONDS": "2",
    "JOBQ_DB_POOL_SIZE": "4",
    "JOBQ_MANAGEMENT_URL": "",
    "JOBQ_HANDLERS": "tests.chaos.handlers",
}

#: The log line each service writes once it is ready (the api answers /health/ready instead).
READY_LINE = {
    "worker": "worker consuming",
    "scheduler": "scheduler running",
    "httpworker": "http worker leasing",
}
#: An HTTP worker's lease (the API's shortest): a killed one's jobs wait this long at most.
HTTP_LEASE_SECONDS = 5


def argv(service: str) -> list[str]:
    """How a service is started: jobq's own with ``python -m services``; an HTTP worker is
    the SDK's ``jobq-http-worker`` (with the cluster's ``http_worker`` credentials)."""
    if service == "httpworker":
        return [
            str(Path(sys.executable).with_name("jobq-http-worker")), "--handlers",
            FAST["JOBQ_HANDLERS"], "--concurrency", "4",
            "--lease-seconds", str(HTTP_LEASE_SECONDS),
        ]  # fmt: skip
    return [sys.executable, "-m", "services", service]


@dataclass
class Cluster:
    database_url: str
    amqp_url: str
    prefix: str
    secret: str
    log_dir: Path
    overrides: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    procs: list[Proc] = field(default_factory=list)
    #: The HTTP workers' API client (``JOBQ_CLIENT_ID``, ``JOBQ_CLIENT_SECRET``), if any.
    http_worker: dict[str, str] = field(default_factory=dict)
    #: Process name -> the port its metrics and health are served on (workers, schedulers).
    metrics_ports: dict[str, int] = field(default_factory=dict)
    #: Processes a fault killed or froze: their in-flight jobs may run twice.
    faulted: set[int] = field(default_factory=set)
    #: Workers that died without being told to (a ``kill`` job), restarted by ``supervise``.
    crashed: list[int] = field(default_factory=list)
    _retired: set[int] = field(default_factory=set)
    _count: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        return clean_env(
            {
                **FAST,
                "JOBQ_DATABASE_URL": self.database_url,
                "JOBQ_AMQP_URL": self.amqp_url,
                "JOBQ_BROKER_PREFIX": self.prefix,
                "JOBQ_JWT_SECRET": self.secret,
                "JOBQ_API_PORT": str(self.port),
                "JOBQ_URL": self.url,
                **self.http_worker,
                **self.overrides,
            }
        )

    def of(self, service: str) -> list[Proc]:
        """The live processes of one service, oldest first."""
        return [
            p for p in self.procs
            if p.name.startswith(service) and p.alive() and p.pid not in self._retired
        ]  # fmt: skip

    async def start(
        self, service: str, within: float = 30.0, env: Mapping[str, str] | None = None
    ) -> Proc:
        """Start one process of ``service``; ``env`` overrides this process's settings (its
        ``JOBQ_DATABASE_URL`` through a proxy, say)."""
        self._count += 1
        name, settings = f"{service}-{self._count}", {**self.env, **(env or {})}
        if service in ("worker", "scheduler"):
            self.metrics_ports[name] = free_port()
            settings[f"JOBQ_{service.upper()}_METRICS_PORT"] = str(self.metrics_ports[name])
        proc = start(name, argv(service), settings, self.log_dir)
        self.procs.append(proc)
        await self.wait_ready(service, proc, within)
        return proc

    async def up(self, workers: int = 2, schedulers: int = 1) -> None:
        await asyncio.gather(
            self.start("api"),
            *(self.start("worker") for _ in range(workers)),
            *(self.start("scheduler") for _ in range(schedulers)),
        )

    async def wait_ready(self, service: str, proc: Proc, within: float = 30.0) -> None:
        deadline = asyncio.get_running_loop().time() + within
        async with httpx.AsyncClient(timeout=1) as client:
            while asyncio.get_running_loop().time() < deadline:
                # A worker may take a job that kills it right after it logged it was ready
                # (the poison scenario): having been ready counts, the supervisor sees the crash.
                if service != "api" and READY_LINE[service] in proc.log.read_text(errors="replace"):
                    return
                if not proc.alive():
                    raise AssertionError(f"{proc.name} exited:\n{proc.tail()}")
                if service == "api":
                    with contextlib.suppress(httpx.HTTPError):
                        if (await client.get(f"{self.url}/health/ready")).status_code == 200:
                            return
                await asyncio.sleep(0.1)
        raise AssertionError(f"{proc.name} not ready within {within}s:\n{proc.tail()}")

    def signal(self, proc: Proc, sig: signal.Signals) -> None:
        """Send ``sig``; a kill or a freeze makes the process's in-flight jobs fair duplicates."""
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            self.faulted.add(proc.pid)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            self._retired.add(proc.pid)
        os.kill(proc.pid, sig)

    async def supervise(self, stop: asyncio.Event) -> None:
        """Restart workers that died on their own (what ``jobq up`` or an orchestrator does);
        their in-flight jobs count as faulted."""
        while not stop.is_set():
            for p in list(self.procs):
                if p.name.startswith("worker") and not p.alive() and p.pid not in self._retired:
                    self._retired.add(p.pid)
                    self.faulted.add(p.pid)
                    self.crashed.append(p.pid)
                    await self.start("worker")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.2)

    def stop(self) -> None:
        for p in self.procs:  # a frozen process cannot handle SIGTERM
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGCONT)
        stop_all([p for p in self.procs if p.alive()], grace=10)

    def logs(self, lines: int = 15) -> str:
        return "\n".join(f"--- {p.name} (pid {p.pid})\n{p.tail(lines)}" for p in self.procs)


@asynccontextmanager
async def own_cluster(
    database_url: str,
    amqp_url: str,
    name: str,
    log_dir: Path,
    secret: str,
    overrides: Mapping[str, str] | None = None,
) -> AsyncIterator[Cluster]:
    """A cluster (not started) on a database and broker prefix of its own; afterwards its
    processes are stopped, the database dropped and every queue it declared deleted."""
    url = await create_database(database_url, f"jobq_{name}")
    prefix = f"jobq{name.replace('_', '')}{secrets.token_hex(3)}"
    cluster = Cluster(url, amqp_url, prefix, secret, log_dir, overrides=dict(overrides or {}))
    try:
        yield cluster
    finally:
        await asyncio.to_thread(cluster.stop)
        conn = await asyncpg.connect(dsn(url))
        try:  # the tests may have declared queues of their own
            queues = [r[0] for r in await conn.fetch("SELECT name FROM queues")]
        finally:
            await conn.close()
        await drop_database(url)
        await delete_broker_objects(amqp_url, prefix, queues)
