"""The Dramatiq peer: ``dramatiq tests.bench.dramatiq_app`` (P processes x T threads);
messages enqueued from this process, with or without publisher confirms (the same workers
serve both: confirms only change the publisher)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from dramatiq.brokers.rabbitmq import RabbitmqBroker

from tests.bench import amqp, dramatiq_app
from tests.bench.peer import PeerStack
from tests.bench.report import DRAMATIQ, DRAMATIQ_CONFIRM, Result


@dataclass(frozen=True)
class DramatiqConfig:
    amqp_url: str
    queue: str
    processes: int
    threads: int
    stall_seconds: float


class DramatiqStack(PeerStack):
    def __init__(self, config: DramatiqConfig, log_dir: Path) -> None:
        self.config = config
        super().__init__(
            "dramatiq",
            config.amqp_url,
            config.queue,
            config.processes,
            {"JOBQBENCH_DRAMATIQ_QUEUE": config.queue},
            config.stall_seconds,
            log_dir,
        )
        self.publishers = {
            confirm: RabbitmqBroker(url=config.amqp_url, confirm_delivery=confirm)
            for confirm in (False, True)
        }

    def commands(self) -> list[list[str]]:
        cfg = self.config
        return [
            [
                *(sys.executable, "-m", "dramatiq", "tests.bench.dramatiq_app"),
                *("--processes", str(cfg.processes), "--threads", str(cfg.threads)),
                *("--queues", cfg.queue),
            ]
        ]

    async def start(self) -> None:
        q = self.queue
        await amqp.delete(self.amqp_url, [q, f"{q}.DQ", f"{q}.XQ"], [])
        await super().start()

    def stop(self) -> None:
        for broker in self.publishers.values():
            broker.close()
        super().stop()

    async def measure(self, jobs: int, run: int, confirm: bool) -> Result:
        broker = self.publishers[confirm]

        def send() -> None:
            broker.enqueue(dramatiq_app.message(self.queue))

        return await self.run(DRAMATIQ_CONFIRM if confirm else DRAMATIQ, jobs, run, send)
