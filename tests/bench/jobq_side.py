"""jobq under test: ``jobq migrate``, one ``jobq api`` and N ``jobq worker`` processes against a
dedicated database and broker prefix; jobs submitted over HTTP, completion read from PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx

from tests.bench import BenchError, amqp
from tests.bench.report import BATCH, SINGLE, Result, percentile
from tests.procs import (
    REPO_ROOT,
    Proc,
    check_alive,
    clean_env,
    free_port,
    start,
    stop_all,
)

TENANT = "bench"
QUEUE = "default"
POLL_INTERVAL = 0.05
NOOP = b'{"type":"noop"}'


@dataclass(frozen=True)
class JobqConfig:
    database_url: str
    amqp_url: str
    broker_prefix: str
    workers: int
    concurrency: int
    #: A drain that makes no progress for this long fails the run.
    stall_seconds: float


def _libpq(url: str, database: str | None = None) -> str:
    """``postgresql+asyncpg://…/db`` as asyncpg spells it, optionally naming another database."""
    parts = urlsplit(url.replace("postgresql+asyncpg://", "postgresql://", 1))
    if database is not None:
        parts = parts._replace(path=f"/{database}")
    return urlunsplit(parts)


class JobqStack:
    """The started services plus the bench's own HTTP client and PostgreSQL connection."""

    def __init__(self, config: JobqConfig, log_dir: Path) -> None:
        self.config = config
        self.log_dir = log_dir
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.env = clean_env(
            {
                "JOBQ_DATABASE_URL": config.database_url,
                "JOBQ_AMQP_URL": config.amqp_url,
                "JOBQ_BROKER_PREFIX": config.broker_prefix,
                "JOBQ_JWT_SECRET": secrets.token_urlsafe(48),
                "JOBQ_API_HOST": "127.0.0.1",
                "JOBQ_API_PORT": str(self.port),
                "JOBQ_WORKER_CONCURRENCY": str(config.concurrency),
                "JOBQ_SHUTDOWN_GRACE_SECONDS": "5",
                # the bench measures capacity, so the submit limits are off
                "JOBQ_SUBMIT_RATE_PER_SECOND": "0",
                "JOBQ_SUBMIT_RATE_PER_TENANT": "0",
            }
        )
        self.procs: list[Proc] = []
        self.credentials: tuple[str, str] = ("", "")
        self._pg: asyncpg.Connection | None = None
        self._http: httpx.AsyncClient | None = None

    @property
    def queue_name(self) -> str:
        return f"{self.config.broker_prefix}.q.{QUEUE}"

    @property
    def pg(self) -> Any:
        if self._pg is None:
            raise RuntimeError("JobqStack.start() first")
        return self._pg

    @property
    def http(self) -> httpx.AsyncClient:
        if self._http is None:
            raise RuntimeError("JobqStack.start() first")
        return self._http

    def _cli(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "services", *args],
            env=self.env,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            raise BenchError(f"jobq {' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
        return done.stdout

    async def start(self) -> None:
        """Fresh database and broker objects, migrations, a client, the api, the workers."""
        cfg = self.config
        database = urlsplit(cfg.database_url).path.lstrip("/")
        admin = await asyncpg.connect(_libpq(cfg.database_url, "postgres"))
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        finally:
            await admin.close()
        p = cfg.broker_prefix
        await amqp.delete(cfg.amqp_url, [f"{p}.q.{QUEUE}", f"{p}.dead"], [f"{p}.jobs", f"{p}.dlx"])

        await asyncio.to_thread(self._cli, "migrate")
        out = await asyncio.to_thread(
            self._cli,
            *("clients", "create", "--name", "bench", "--tenant", TENANT),
            *("--scopes", "jobs:write,jobs:read", "--json"),
        )
        created = json.loads(out)
        self.credentials = (created["client_id"], created["client_secret"])

        self._pg = await asyncpg.connect(_libpq(cfg.database_url))
        # For health and tokens; each measured phase opens its own client (see ``_client``).
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=30.0)

        self.procs.append(
            start("jobq-api", [sys.executable, "-m", "services", "api"], self.env, self.log_dir)
        )
        await self._wait_ready()
        for i in range(cfg.workers):
            argv = [
                sys.executable,
                "-m",
                "services",
                "worker",
                "--concurrency",
                str(cfg.concurrency),
            ]
            self.procs.append(start(f"jobq-worker-{i + 1}", argv, self.env, self.log_dir))
        await self._wait_consumers(cfg.workers)

    async def _wait_ready(self, within: float = 60.0) -> None:
        deadline = time.monotonic() + within
        last = "no answer"
        while time.monotonic() < deadline:
            check_alive(self.procs)
            try:
                r = await self.http.get("/health/ready", timeout=2.0)
                if r.status_code == 200:
                    return
                last = f"{r.status_code} {r.text}"
            except httpx.TransportError as exc:
                last = repr(exc)
            await asyncio.sleep(0.1)
        raise BenchError(f"jobq api not ready after {within:.0f}s: {last}")

    async def _wait_consumers(self, count: int, within: float = 60.0) -> None:
        deadline = time.monotonic() + within
        state: tuple[int, int] | None = None
        while time.monotonic() < deadline:
            check_alive(self.procs)
            state = await amqp.queue_state(self.config.amqp_url, self.queue_name)
            if state is not None and state[1] >= count:
                return
            await asyncio.sleep(0.1)
        raise BenchError(f"{count} jobq workers not consuming {self.queue_name}: {state}")

    def stop(self) -> None:
        stop_all(self.procs)
        self.procs.clear()

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()
        if self._pg is not None:
            await self._pg.close()

    async def _reset(self) -> dict[str, str]:
        """Empty the jobs table and the broker queue; a fresh token. Returns the auth header."""
        await self.pg.execute("TRUNCATE jobs")
        state = await amqp.queue_state(self.config.amqp_url, self.queue_name)
        if state is not None and state[0]:
            print(f"  note: {state[0]} leftover tickets in {self.queue_name}; purged", flush=True)
            await amqp.purge(self.config.amqp_url, self.queue_name)
        r = await self.http.post(
            "/v1/auth/token",
            data={"grant_type": "client_credentials"},
            auth=self.credentials,
        )
        if r.status_code != 200:
            raise BenchError(f"token request failed: {r.status_code} {r.text}")
        return {"Authorization": f"Bearer {r.json()['access_token']}"}

    async def _wait_succeeded(self, jobs: int) -> float:
        """Poll until ``jobs`` rows are succeeded; returns that moment (``perf_counter``)."""
        seen, progressed = -1, time.monotonic()
        while True:
            done = await self.pg.fetchval("SELECT count(*) FROM jobs WHERE status = 'succeeded'")
            now = time.perf_counter()
            if done >= jobs:
                return now
            if done != seen:
                seen, progressed = done, time.monotonic()
            elif time.monotonic() - progressed > self.config.stall_seconds:
                rows = await self.pg.fetch("SELECT status, count(*) FROM jobs GROUP BY status")
                counts = ", ".join(f"{r['status']}={r['count']}" for r in rows)
                raise BenchError(
                    f"jobq drain stalled at {done}/{jobs} succeeded for "
                    f"{self.config.stall_seconds:.0f}s ({counts})\n" + self._tails()
                )
            check_alive(self.procs)
            await asyncio.sleep(POLL_INTERVAL)

    def _client(self, connections: int) -> httpx.AsyncClient:
        """A client for one phase, with fresh connections. httpx keeps an idle connection for
        5 s by default, uvicorn closes one after 5 s idle (its ``timeout_keep_alive``): under
        load the server's close crosses the client's next request on that connection, which
        fails with ``ReadError``. Dropping idle connections after 1 s avoids the race."""
        limits = httpx.Limits(
            max_connections=connections,
            max_keepalive_connections=connections,
            keepalive_expiry=1.0,
        )
        return httpx.AsyncClient(base_url=self.base_url, limits=limits, timeout=60.0)

    async def _post(
        self, client: httpx.AsyncClient, path: str, body: bytes, headers: dict[str, str]
    ) -> None:
        try:
            r = await client.post(path, content=body, headers=headers)
        except httpx.TransportError as exc:
            at = time.strftime("%H:%M:%S")
            await asyncio.sleep(1.0)  # if the api is going down, let it finish
            check_alive(self.procs)
            raise BenchError(
                f"POST {path} failed at {at}: {exc!r}; the api is still running\n" + self._tails()
            ) from exc
        if r.status_code != 202:
            raise BenchError(f"POST {path}: {r.status_code} {r.text[:1000]}")

    def _tails(self) -> str:
        return "\n".join(f"--- {p.name} ({p.log}):\n{p.tail(15)}" for p in self.procs)

    async def run_batch(self, jobs: int, batch_size: int, in_flight: int, run: int) -> Result:
        """Submit ``jobs`` through ``POST /v1/jobs/batch``, ``in_flight`` requests at once."""
        headers = await self._reset()
        headers["Content-Type"] = "application/json"
        sizes = [min(batch_size, jobs - i) for i in range(0, jobs, batch_size)]
        # Encoded before the clock starts: the bench's own CPU is shared with the services.
        bodies = iter([b'{"jobs":[' + b",".join([NOOP] * size) + b"]}" for size in sizes])

        async def submitter() -> None:
            for body in bodies:
                await self._post(client, "/v1/jobs/batch", body, headers)

        async with self._client(in_flight) as client:
            t0 = time.perf_counter()
            await concurrently(submitter, min(in_flight, len(sizes)))
            t_enqueued = time.perf_counter()
        t_done = await self._wait_succeeded(jobs)
        return Result(BATCH, run, jobs, t_enqueued - t0, t_done - t0)

    async def run_single(self, jobs: int, clients: int, run: int) -> Result:
        """Submit ``jobs`` as single ``POST /v1/jobs`` requests, ``clients`` at once."""
        headers = await self._reset()
        headers["Content-Type"] = "application/json"
        latencies: list[float] = []
        remaining = iter(range(jobs))

        async def submitter() -> None:
            for _ in remaining:
                t = time.perf_counter()
                await self._post(client, "/v1/jobs", NOOP, headers)
                latencies.append(time.perf_counter() - t)

        async with self._client(clients) as client:
            t0 = time.perf_counter()
            await concurrently(submitter, min(clients, jobs))
            t_enqueued = time.perf_counter()
        t_done = await self._wait_succeeded(jobs)
        ms = sorted(x * 1000 for x in latencies)
        return Result(
            SINGLE, run, jobs, t_enqueued - t0, t_done - t0, percentile(ms, 50), percentile(ms, 99)
        )


async def concurrently(factory: Callable[[], Coroutine[Any, Any, None]], copies: int) -> None:
    """Run ``copies`` of a coroutine; the first failure cancels the rest and is raised as is."""
    try:
        async with asyncio.TaskGroup() as tg:
            for _ in range(copies):
                tg.create_task(factory())
    except ExceptionGroup as group:
        raise group.exceptions[0] from None
