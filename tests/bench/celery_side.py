"""The Celery peers: ``celery -A tests.bench.celery_app worker`` processes, lean (no result
backend) or storing every result in PostgreSQL (its own database, through psycopg); tasks
sent with ``apply_async`` from this process."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from tests.bench import amqp, celery_app, pg
from tests.bench.peer import PeerStack
from tests.bench.report import Result


@dataclass(frozen=True)
class CeleryConfig:
    amqp_url: str
    queue: str
    #: Worker processes (``celery worker`` commands) and the pool each one runs.
    workers: int
    pool: str
    concurrency: int
    stall_seconds: float
    #: ``postgresql+asyncpg://…`` of a database for results (created afresh), or ``None``.
    results_url: str | None = None


class CeleryStack(PeerStack):
    def __init__(self, system: str, config: CeleryConfig, log_dir: Path) -> None:
        self.system = system
        self.config = config
        url = config.results_url
        self.backend = None if url is None else pg.respell(url, scheme="db+postgresql+psycopg")
        env = {
            "JOBQBENCH_CELERY_QUEUE": config.queue,
            "JOBQBENCH_CELERY_BACKEND": self.backend or "",
        }
        super().__init__(
            system.replace("+", "-"),
            config.amqp_url,
            config.queue,
            config.workers,
            env,
            config.stall_seconds,
            log_dir,
            databases=[pg.database_of(url)] if url else (),
        )
        # This process only publishes, through an app of its own.
        self.task: Any = celery_app.make_app(config.amqp_url, config.queue, self.backend).tasks[
            celery_app.TASK
        ]

    def commands(self) -> list[list[str]]:
        cfg = self.config
        return [
            [
                *(sys.executable, "-m", "celery", "-A", "tests.bench.celery_app", "worker"),
                f"--pool={cfg.pool}",
                f"--concurrency={cfg.concurrency}",
                *("--without-heartbeat", "--without-gossip", "--without-mingle"),
                *("-Q", cfg.queue, "--loglevel=warning", "-n", f"{self.name}{i + 1}@%h"),
            ]
            for i in range(cfg.workers)
        ]

    async def start(self) -> None:
        await amqp.delete(self.amqp_url, [self.queue], [self.queue])
        if self.config.results_url:
            await pg.fresh_database(self.config.results_url)
        await super().start()

    async def reset(self) -> None:
        """Also empty the results table, as jobq's runs start with an empty jobs table."""
        await super().reset()
        if self.config.results_url:
            conn = await asyncpg.connect(pg.libpq(self.config.results_url))
            try:
                if await conn.fetchval("SELECT to_regclass('celery_taskmeta')"):
                    await conn.execute("TRUNCATE celery_taskmeta")
            finally:
                await conn.close()

    async def measure(self, jobs: int, run: int) -> Result:
        return await self.run(self.system, jobs, run, self.task.apply_async)
