"""The fault suite's harness, shared by the tests and ``make soak``: a database of its own,
the processes, the load client, and ``Chaos.settle``: wait for quiet, then check."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import asyncpg

from shared.config import Settings
from shared.db.clients import ClientStore
from shared.db.engine import make_engine
from tests.chaos import checker
from tests.chaos.cluster import Cluster
from tests.chaos.faults import pg_ready
from tests.chaos.proxy import Proxy
from tests.chaos.workload import Load
from tests.services import create_database, drop_database, dsn

TERMINAL = ("succeeded", "dead", "canceled")
T = TypeVar("T")


@asynccontextmanager
async def chaos_database(server_url: str) -> AsyncIterator[str]:
    """A fresh migrated database with the audit trigger and the handler's tables, dropped
    afterwards (once PostgreSQL answers again, if a fault stopped it)."""
    url = await create_database(server_url, "jobq_chaos")
    try:
        conn = await asyncpg.connect(dsn(url))
        await checker.install(conn)
        await conn.close()
        yield url
    finally:
        for _ in range(300):
            if pg_ready():
                break
            await asyncio.sleep(0.1)
        await drop_database(url)


#: The job queues a fault scenario declares (``control`` is the consumer-timeout test's).
CHAOS_QUEUES = ("default", "control")


@dataclass
class Chaos:
    cluster: Cluster
    load: Load
    #: Called with every scenario's figures (the tests print them in the summary).
    report: Callable[[checker.Figures], None] = lambda figures: None
    #: Leases held when a fault struck everything at once (a database outage).
    excused: set[uuid.UUID] = field(default_factory=set)
    #: Proxies started by ``proxy``: healed before the processes stop, closed after.
    proxies: list[Proxy] = field(default_factory=list)
    _supervisor: asyncio.Task[None] | None = None
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def dsn(self) -> str:
        return dsn(self.cluster.database_url)

    @property
    def database(self) -> str:
        return urlsplit(self.dsn).path.lstrip("/")

    @property
    def admin_dsn(self) -> str:
        return urlunsplit(urlsplit(self.dsn)._replace(path="/postgres"))

    async def up(self, workers: int = 2, schedulers: int = 1) -> None:
        await self.cluster.up(workers, schedulers)
        self._supervisor = asyncio.create_task(self.cluster.supervise(self._stop))

    async def http_workers_for(self, tenant: str) -> None:
        """HTTP workers started from now on take ``tenant``'s jobs (a client of its own with
        ``jobs:work``; an HTTP worker serves one tenant)."""
        engine = make_engine(Settings(database_url=self.cluster.database_url), "chaos", 1)
        try:
            client, secret = await ClientStore(engine).register("chaos-http", tenant, ["jobs:work"])
        finally:
            await engine.dispose()
        self.cluster.http_worker = {"JOBQ_CLIENT_ID": str(client.id), "JOBQ_CLIENT_SECRET": secret}

    async def proxy(self, url: str) -> Proxy:
        """A proxy in front of the server of ``url`` (the database or the broker); processes
        started with its ``url`` reach that server through it."""
        proxy = await Proxy.to(url)
        self.proxies.append(proxy)
        return proxy

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection of its own: a fault may have cut any older one."""
        conn = await asyncpg.connect(self.dsn)
        try:
            yield conn
        finally:
            await conn.close()

    async def fetchval(self, sql: str, *args: object) -> object:
        async with self.connection() as conn:
            return await conn.fetchval(sql, *args)

    async def in_flight(self, pid: int | None = None) -> set[uuid.UUID]:
        """Leases of the jobs running now (on one worker process, if ``pid``): recorded
        executions whose lease is still the job's."""
        async with self.connection() as conn:
            rows = await conn.fetch(
                "SELECT e.lease_id FROM chaos_executions e JOIN jobs j"
                " ON j.id = e.job_id AND j.lease_id = e.lease_id AND j.status = 'running'"
                " WHERE $1::int IS NULL OR e.pid = $1",
                pid,
            )
        return {r["lease_id"] for r in rows}

    async def excuse_leases_held(self, since: datetime, until: datetime) -> int:
        """Excuse the leases held at any time in [since, until] (an outage of PostgreSQL:
        no lease could be renewed); returns how many."""
        async with self.connection() as conn:
            rows = await conn.fetch(
                "SELECT c.new_lease FROM jobq_audit c WHERE c.to_status = 'running'"
                " AND c.at < $2 AND NOT EXISTS (SELECT 1 FROM jobq_audit l"
                "  WHERE l.old_lease = c.new_lease AND l.from_status = 'running' AND l.at < $1)",
                since, until,
            )  # fmt: skip
        self.excused |= {r["new_lease"] for r in rows}
        return len(rows)

    async def orphan_seconds(self, since: datetime, leases: set[uuid.UUID]) -> float:
        """The longest wait, from ``since`` (a kill), until the jobs those leases held were
        claimed again: how long a crash leaves work orphaned. Call once the system is quiet."""
        async with self.connection() as conn:
            waited = await conn.fetchval(
                "SELECT max(EXTRACT(EPOCH FROM (SELECT min(n.at) - $1 FROM jobq_audit n"
                "  WHERE n.job_id = c.job_id AND n.to_status = 'running' AND n.at > $1)))"
                " FROM jobq_audit c WHERE c.new_lease = ANY($2) AND c.to_status = 'running'",
                since, list(leases),
            )  # fmt: skip
        return round(float(waited or 0.0), 2)

    async def until(
        self, holds: Callable[[T], bool], read: Callable[[], Awaitable[T]], within: float = 30.0
    ) -> T:
        """Poll ``read()`` until ``holds`` its value; fail after ``within`` seconds."""
        deadline = asyncio.get_running_loop().time() + within
        while not holds(value := await read()):
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"still {value!r} after {within}s")
            await asyncio.sleep(0.1)
        return value

    async def quiet(self, within: float = 120.0) -> float:
        """Wait until every accepted job is terminal; returns the loop time it happened."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        ids = list(self.load.accepted.values())
        while loop.time() < deadline:
            with contextlib.suppress(OSError, asyncpg.PostgresError):
                done = await self.fetchval(
                    "SELECT count(*) FROM jobs WHERE id = ANY($1) AND status = ANY($2)",
                    ids, list(TERMINAL),
                )  # fmt: skip
                if done == len(ids):
                    return loop.time()
            await asyncio.sleep(0.2)
        return loop.time()  # the checker reports what is still unfinished as lost

    def worker_stats(self) -> Counter[str]:
        """The counters every worker logged when it stopped gracefully."""
        total: Counter[str] = Counter()
        for p in self.cluster.procs:
            if not p.name.startswith("worker"):
                continue
            for line in p.log.read_text(errors="replace").splitlines():
                if '"worker stopped"' in line:
                    total.update(json.loads(line).get("stats", {}))
        return total

    async def settle(self, scenario: str, fault_ended: float, **extra: object) -> checker.Figures:
        """Wait for quiet, stop the processes gracefully and compute every figure."""
        quiet = await self.quiet()
        await self.stop()
        async with self.connection() as conn:
            f = await checker.check(
                conn, scenario, self.load.accepted, self.cluster.faulted, self.excused
            )
        f.recovery_seconds = max(0.0, quiet - fault_ended)
        f.http = self.load.http
        stats = self.worker_stats()
        f.extra = {
            **extra,
            "client_retries": self.load.retries,
            "key_replays": self.load.replays,
            "duplicate_tickets": stats["duplicates"],
            "stale_completions": stats["stale"],
            "lease_lost": stats["lease_lost"],
            "handed_back": stats["handed_back"],
        }
        self.report(f)
        return f

    async def finish(self, scenario: str, fault_ended: float, **extra: object) -> checker.Figures:
        """``settle``, then fail on any violated invariant."""
        f = await self.settle(scenario, fault_ended, **extra)
        problems = f.problems()
        assert not problems, "\n".join(
            [f.summary(), *problems, *f.examples[:15], self.cluster.logs()]
        )
        return f

    async def stop(self) -> None:
        self._stop.set()
        supervisor, self._supervisor = self._supervisor, None
        try:
            if supervisor is not None:
                await supervisor
        finally:  # a failed restart must not leave the other processes running
            for proxy in self.proxies:  # processes drain cleanly only while they reach servers
                proxy.pass_through()
            try:
                await asyncio.to_thread(self.cluster.stop)
            finally:
                for proxy in self.proxies:
                    await proxy.close()

    async def dead_letters(self) -> list[aio_pika.abc.AbstractIncomingMessage]:
        """Everything in the dead-letter queue (taken off it)."""
        out = []
        conn = await aio_pika.connect(self.cluster.amqp_url)
        try:
            ch = await conn.channel()
            q = await ch.get_queue(f"{self.cluster.prefix}.dead", ensure=False)
            while (m := await q.get(no_ack=True, fail=False)) is not None:
                out.append(m)
        finally:
            await conn.close()
        return out
