"""jobq under test: ``jobq migrate``, ``jobq api --processes P``, ``jobq scheduler`` and N
``jobq worker`` processes against a dedicated database and broker prefix; jobs submitted over
HTTP (batches with httpx, single submits with ``loadgen``), completion read from PostgreSQL."""

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

import asyncpg
import httpx

from tests.bench import BenchError, amqp, pg, tails
from tests.bench.loadgen import Tally, Target, closed_loop, open_loop
from tests.bench.procstat import Probe
from tests.bench.report import (
    BATCH,
    BATCH_FAIR_OFF,
    BATCH_KEYS,
    BATCH_NO_METRICS,
    SINGLE,
    FairPoint,
    OpenLoop,
    Result,
    percentile,
)
from tests.procs import REPO_ROOT, Proc, check_alive, clean_env, free_port, start, stop_all

TENANT = "bench"
#: The fairness phase's tenants: one offering a steady load, one flooding beside it.
VICTIM, FLOOD = "victim", "flood"
QUEUE = "default"
POLL_INTERVAL = 0.05
NOOP = b'{"type":"noop"}'


@dataclass(frozen=True)
class JobqConfig:
    database_url: str
    amqp_url: str
    broker_prefix: str
    api_processes: int
    workers: int
    concurrency: int
    #: A drain that makes no progress for this long fails the run.
    stall_seconds: float
    #: ``JOBQ_METRICS``: off, the services count nothing (what metrics cost, measured).
    metrics: bool = True
    #: ``JOBQ_FAIR_DEPTH`` (``None``: the default); 0 turns fair dispatch off.
    fair_depth: int | None = None

    @property
    def batch_system(self) -> str:
        if self.fair_depth == 0:
            return BATCH_FAIR_OFF
        return BATCH if self.metrics else BATCH_NO_METRICS


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
                "JOBQ_API_PROCESSES": str(config.api_processes),
                "JOBQ_WORKER_CONCURRENCY": str(config.concurrency),
                "JOBQ_SHUTDOWN_GRACE_SECONDS": "5",
                # the bench measures capacity, so the submit limits are off
                "JOBQ_SUBMIT_RATE_PER_SECOND": "0",
                "JOBQ_SUBMIT_RATE_PER_TENANT": "0",
                "JOBQ_METRICS": str(config.metrics).lower(),
                **(
                    {} if config.fair_depth is None else {"JOBQ_FAIR_DEPTH": str(config.fair_depth)}
                ),
            }
        )
        self.procs: list[Proc] = []
        self.credentials: tuple[str, str] = ("", "")
        #: The fairness phase's tenants' credentials.
        self.tenants: dict[str, tuple[str, str]] = {}
        self._db: asyncpg.Connection | None = None
        self._http: httpx.AsyncClient | None = None
        self.probe = Probe(self._trees, [pg.database_of(config.database_url)])

    @property
    def queue_name(self) -> str:
        return f"{self.config.broker_prefix}.q.{QUEUE}"

    @property
    def db(self) -> Any:
        if self._db is None:
            raise RuntimeError("JobqStack.start() first")
        return self._db

    @property
    def http(self) -> httpx.AsyncClient:
        if self._http is None:
            raise RuntimeError("JobqStack.start() first")
        return self._http

    def _trees(self) -> dict[str, list[int]]:
        """The processes of each role, named ``jobq-<role>[-<n>]``."""
        trees: dict[str, list[int]] = {}
        for proc in self.procs:
            trees.setdefault(proc.name.split("-")[1], []).append(proc.pid)
        return trees

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
        """Fresh database and broker objects, migrations, a client, the api, the scheduler,
        the workers."""
        cfg = self.config
        await pg.fresh_database(cfg.database_url)
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
        for tenant in (VICTIM, FLOOD):
            out = await asyncio.to_thread(
                self._cli,
                *("clients", "create", "--name", tenant, "--tenant", tenant),
                *("--scopes", "jobs:write,jobs:read", "--json"),
            )
            made = json.loads(out)
            self.tenants[tenant] = (made["client_id"], made["client_secret"])

        self._db = await asyncpg.connect(pg.libpq(cfg.database_url))
        self.probe.excluded.add(self.db.get_server_pid())  # it only polls
        # For health and tokens; each measured phase opens its own client (see ``_client``).
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=30.0)

        for name in ("api", "scheduler"):
            argv = [sys.executable, "-m", "services", name]
            self.procs.append(start(f"jobq-{name}", argv, self.env, self.log_dir))
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
        await amqp.wait_consumers(cfg.amqp_url, self.queue_name, cfg.workers, self.procs)

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

    def stop(self) -> None:
        stop_all(self.procs)
        self.procs.clear()

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()
        if self._db is not None:
            await self._db.close()

    async def _reset(self) -> str:
        """Empty the jobs table and the broker queue; returns a fresh token."""
        await self.db.execute("TRUNCATE jobs, job_dependencies")
        state = await amqp.queue_state(self.config.amqp_url, self.queue_name)
        if state is not None and state[0]:
            print(f"  note: {state[0]} leftover tickets in {self.queue_name}; purged", flush=True)
            await amqp.purge(self.config.amqp_url, self.queue_name)
        return await self._token(self.credentials)

    async def _token(self, credentials: tuple[str, str]) -> str:
        r = await self.http.post(
            "/v1/auth/token", data={"grant_type": "client_credentials"}, auth=credentials
        )
        if r.status_code != 200:
            raise BenchError(f"token request failed: {r.status_code} {r.text}")
        return str(r.json()["access_token"])

    async def _wait_succeeded(self, jobs: int) -> float:
        """Poll until ``jobs`` rows are succeeded; returns that moment (``perf_counter``)."""
        seen, progressed = -1, time.monotonic()
        while True:
            done = await self.db.fetchval("SELECT count(*) FROM jobs WHERE status = 'succeeded'")
            now = time.perf_counter()
            if done >= jobs:
                return now
            if done != seen:
                seen, progressed = done, time.monotonic()
            elif time.monotonic() - progressed > self.config.stall_seconds:
                rows = await self.db.fetch("SELECT status, count(*) FROM jobs GROUP BY status")
                counts = ", ".join(f"{r['status']}={r['count']}" for r in rows)
                raise BenchError(
                    f"jobq drain stalled at {done}/{jobs} succeeded for "
                    f"{self.config.stall_seconds:.0f}s ({counts})\n" + tails(self.procs)
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
                f"POST {path} failed at {at}: {exc!r}; the api is still running\n"
                + tails(self.procs)
            ) from exc
        if r.status_code != 202:
            raise BenchError(f"POST {path}: {r.status_code} {r.text[:1000]}")

    async def run_batch(
        self, jobs: int, batch_size: int, in_flight: int, run: int, keys: int = 0
    ) -> Result:
        """Submit ``jobs`` through ``POST /v1/jobs/batch``, ``in_flight`` requests at once;
        with ``keys``, each job names one of that many concurrency keys (limit 50 each: every
        job is held and released by the dispatcher)."""
        headers = {
            "Authorization": f"Bearer {await self._reset()}",
            "Content-Type": "application/json",
        }
        sizes = [min(batch_size, jobs - i) for i in range(0, jobs, batch_size)]

        def job(i: int) -> bytes:
            if not keys:
                return NOOP
            return b'{"type":"noop","concurrency_key":"k%d","concurrency_limit":50}' % (i % keys)

        # Encoded before the clock starts: the bench's own CPU is shared with the services.
        bodies = iter([
            b'{"jobs":[' + b",".join(job(i) for i in range(size)) + b"]}" for size in sizes
        ])  # fmt: skip

        async def submitter() -> None:
            for body in bodies:
                await self._post(client, "/v1/jobs/batch", body, headers)

        async with self._client(in_flight) as client:
            cpu_before = self.probe.snapshot()
            t0 = time.perf_counter()
            await concurrently(submitter, min(in_flight, len(sizes)))
            t_enqueued = time.perf_counter()
        t_done = await self._wait_succeeded(jobs)
        usage = self.probe.usage_since(cpu_before, jobs)
        system = BATCH_KEYS if keys else self.config.batch_system
        return Result(system, run, jobs, t_enqueued - t0, t_done - t0, usage=usage)

    async def run_flood(
        self, rate: float, seconds: float, factor: int, job_seconds: float, run: int
    ) -> FairPoint:
        """A victim tenant offers ``rate`` jobs a second (single submits, an open loop) of
        ``job_seconds`` each for ``seconds``; beside it (``factor`` > 0) a flood tenant
        offers ``factor`` times as many, in batches ten times a second. Waits for every job,
        then reads the victim's due-to-start latencies."""
        await self._reset()
        body = b'{"type":"sleep","payload":{"seconds":%g}}' % job_seconds
        victim = Target.post(
            f"{self.base_url}/v1/jobs", body, await self._token(self.tenants[VICTIM])
        )
        headers = {
            "Authorization": f"Bearer {await self._token(self.tenants[FLOOD])}",
            "Content-Type": "application/json",
        }
        per_batch = round(rate * factor / 10)
        batch = b'{"jobs":[' + b",".join([body] * per_batch) + b"]}"
        flooded = 0

        async def flood() -> None:
            nonlocal flooded
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            async with self._client(4) as client:
                for i in range(round(seconds * 10) if factor else 0):
                    await asyncio.sleep(max(0.0, t0 + i / 10 - loop.time()))
                    await self._post(client, "/v1/jobs/batch", batch, headers)
                    flooded += per_batch

        tally, _ = await asyncio.gather(self._load(open_loop(victim, rate, seconds)), flood())
        accepted = self._accepted(tally, round(rate * seconds))
        await self._wait_succeeded(accepted + flooded)
        due = await self.db.fetch(
            "SELECT extract(epoch FROM started_at - run_at) * 1000 AS ms FROM jobs"
            " WHERE tenant = $1 ORDER BY 1",
            VICTIM,
        )
        due_ms = [float(row["ms"]) for row in due]
        return FairPoint(
            run=run,
            fair=self.config.fair_depth != 0,
            flood=factor,
            victim_jobs=accepted,
            flood_jobs=flooded,
            due_p50_ms=percentile(due_ms, 50) if due_ms else None,
            due_p99_ms=percentile(due_ms, 99) if due_ms else None,
        )

    async def run_single(self, jobs: int, clients: int, run: int) -> Result:
        """Submit ``jobs`` as single ``POST /v1/jobs`` requests from ``clients`` at once
        (a closed loop: each sends its next request when the last one is answered)."""
        target = Target.post(f"{self.base_url}/v1/jobs", NOOP, await self._reset())
        cpu_before = self.probe.snapshot()
        t0 = time.perf_counter()
        tally = await self._load(closed_loop(target, min(clients, jobs), jobs))
        t_enqueued = time.perf_counter()
        accepted = self._accepted(tally, jobs)
        t_done = await self._wait_succeeded(accepted)
        return Result(
            SINGLE,
            run,
            accepted,
            t_enqueued - t0,
            t_done - t0,
            p50_ms=tally.quantile(50),
            p99_ms=tally.quantile(99),
            p999_ms=tally.quantile(99.9),
            usage=self.probe.usage_since(cpu_before, accepted),
        )

    async def run_open(self, rate: float, seconds: float, run: int) -> OpenLoop:
        """Offer single submits at ``rate`` a second for ``seconds`` (an open loop), wait for
        the accepted jobs to succeed, then read their due-to-start latencies."""
        target = Target.post(f"{self.base_url}/v1/jobs", NOOP, await self._reset())
        tally = await self._load(open_loop(target, rate, seconds))
        accepted = self._accepted(tally, round(rate * seconds))
        if accepted:
            await self._wait_succeeded(accepted)
        due = await self.db.fetch(
            "SELECT extract(epoch FROM started_at - run_at) * 1000 AS ms FROM jobs"
            " WHERE started_at IS NOT NULL ORDER BY 1"
        )
        due_ms = [float(row["ms"]) for row in due]
        return OpenLoop(
            run=run,
            offered=rate,
            accepted=accepted,
            seconds=tally.seconds,
            p50_ms=tally.quantile(50),
            p99_ms=tally.quantile(99),
            p999_ms=tally.quantile(99.9),
            due_p50_ms=percentile(due_ms, 50) if due_ms else None,
            due_p99_ms=percentile(due_ms, 99) if due_ms else None,
            refused={s: n for s, n in tally.statuses.items() if not 200 <= s < 300},
            errors=dict(tally.errors),
        )

    async def _load(self, loop: Coroutine[Any, Any, Tally]) -> Tally:
        """Run a load generator; a connection that fails outside its own accounting (the
        closed loop's, or opening the open loop's) fails the run, with the services' logs."""
        try:
            return await loop
        except (OSError, asyncio.IncompleteReadError) as exc:
            await asyncio.sleep(1.0)  # if the api is going down, let it finish
            check_alive(self.procs)
            raise BenchError(f"load generator failed: {exc!r}\n" + tails(self.procs)) from exc

    @staticmethod
    def _accepted(tally: Tally, sent: int) -> int:
        """The 2xx answers; any other outcome is worth a line before the run goes on."""
        accepted = tally.accepted()
        if accepted != sent:
            other = {**{str(s): n for s, n in tally.statuses.items()}, **tally.errors}
            print(f"  note: {accepted}/{sent} accepted ({other})", flush=True)
        return accepted


async def concurrently(factory: Callable[[], Coroutine[Any, Any, None]], copies: int) -> None:
    """Run ``copies`` of a coroutine; the first failure cancels the rest and is raised as is."""
    try:
        async with asyncio.TaskGroup() as tg:
            for _ in range(copies):
                tg.create_task(factory())
    except ExceptionGroup as group:
        raise group.exceptions[0] from None
