"""The README's example project: a worker runs handlers of the user's own package, found from
its working directory, and says in one line what is wrong with a handler module."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import jobq
import pytest

from shared.config import Settings
from shared.db.engine import make_engine
from tests.chaos.cluster import Cluster
from tests.conftest import TEST_SECRET
from tests.procs import REPO_ROOT, start, stop_all
from tests.sdk.conftest import Live
from tests.services import create_database, delete_broker_objects, drop_database

pytestmark = pytest.mark.e2e

EXAMPLE = REPO_ROOT / "examples" / "python"


@pytest.fixture(scope="module")
async def example(
    database_url: str, amqp_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Live]:
    """The api and the scheduler, and one worker started in the example project's directory
    with ``--handlers myapp.jobs`` (and nothing else of the tests')."""
    url = await create_database(database_url, "jobq_example")
    prefix = f"jobqex{secrets.token_hex(3)}"
    log_dir: Path = tmp_path_factory.mktemp("example")
    cluster = Cluster(url, amqp_url, prefix, TEST_SECRET, log_dir)
    cluster.overrides["JOBQ_HANDLERS"] = ""
    engine = make_engine(Settings(database_url=url), "tests", pool_size=2)
    worker = None
    try:
        await cluster.up(workers=0, schedulers=1)
        argv = [sys.executable, "-m", "services", "worker", "--handlers", "myapp.jobs"]
        worker = start("example-worker", argv, cluster.env, log_dir, cwd=EXAMPLE)
        await cluster.wait_ready("worker", worker)
        yield Live(cluster.url, engine)
    finally:
        await asyncio.to_thread(stop_all, [worker] if worker else [])
        await asyncio.to_thread(cluster.stop)
        await engine.dispose()
        await drop_database(url)
        await delete_broker_objects(amqp_url, prefix, ("default",))


async def test_the_example_handlers_run(example: Live) -> None:
    async with jobq.AsyncClient(await example.credentials()) as client:
        thumb = await client.submit("myapp.thumbnail", {"image": "cat.png", "width": 64})
        hello = await client.submit("myapp.welcome", {"name": "Ada"})
        bad = await client.submit("myapp.thumbnail", {"image": "cat.png", "width": 0})
        wrong = await client.submit("myapp.thumbnail", {"width": "wide"})
        done = await asyncio.gather(*(client.wait(j.id, 30) for j in (thumb, hello, bad, wrong)))
    assert done[0].result == {"thumbnail": "cat.png@64px", "attempt": 1}
    assert done[1].result == "Welcome, Ada!"
    for failed in done[2:]:  # PermanentError, and a payload that does not fit: no retries
        assert failed.status is jobq.JobStatus.DEAD
        assert failed.attempts == 1
    assert "width must be positive" in str(done[2].last_error)
    assert "invalid payload for myapp.thumbnail" in str(done[3].last_error)


@pytest.mark.parametrize(
    ("modules", "says"),
    [
        ("myapp.nosuch", "cannot import handler module 'myapp.nosuch': ModuleNotFoundError"),
        ("myapp", "module 'myapp' declares no handler"),
    ],
)
def test_a_bad_handler_module_is_one_line_and_exit_2(modules: str, says: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "services", "worker", "--handlers", modules],
        cwd=EXAMPLE, env={**os.environ, "JOBQ_HANDLERS": ""}, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"jobq: {says}"), done.stderr


def test_the_readme_shows_the_example_as_it_is() -> None:
    section = (REPO_ROOT / "README.md").read_text().split("\n## Workers and handlers\n", 1)[1]
    shown = section.split("```python\n", 1)[1].split("```", 1)[0]
    first, rest = shown.split("\n", 1)
    assert first == "# examples/python/myapp/jobs.py"
    assert rest in (EXAMPLE / "myapp" / "jobs.py").read_text()
