"""Fixtures of the fault suite: a database and broker prefix per test, the processes and the
load client (``tests.chaos.harness``), and the figures each scenario reports in the summary."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.chaos.cluster import Cluster
from tests.chaos.harness import CHAOS_QUEUES, Chaos, chaos_database
from tests.chaos.workload import Load
from tests.conftest import TEST_SECRET
from tests.services import delete_broker_objects

#: Where ``pytest_terminal_summary`` finds the figures each scenario reported.
FIGURES = pytest.StashKey[list[str]]()


@pytest.fixture
async def chaos(
    database_url: str, amqp_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Chaos]:
    prefix = f"jobqchaos{secrets.token_hex(3)}"
    async with chaos_database(database_url) as url:
        cluster = Cluster(url, amqp_url, prefix, TEST_SECRET, tmp_path)
        c = Chaos(cluster, await Load.against(cluster.url, url, TEST_SECRET))
        c.report = lambda f: request.config.stash.setdefault(FIGURES, []).append(f.summary())
        try:
            yield c
        finally:
            await c.stop()
            await delete_broker_objects(amqp_url, prefix, CHAOS_QUEUES)


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    lines = config.stash.get(FIGURES, [])
    if lines:
        terminalreporter.section("fault scenarios: figures")
        for line in lines:
            terminalreporter.write_line(line)
