"""Schemathesis against the served API: every operation of its OpenAPI document, called with
data generated from the document (valid and invalid), must answer without a 5xx and as the
document says (status, media type, body, headers), refuse invalid input and demand a token.

The API runs as a real process on a database and broker prefix of its own; no worker runs, so
the fuzzed jobs only wait in their queues until both are dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
import pytest

from tests.conftest import TEST_SECRET
from tests.procs import REPO_ROOT, Proc, clean_env, free_port, start, stop_all
from tests.services import create_database, delete_broker_objects, drop_database, dsn

pytestmark = pytest.mark.e2e

#: Not ``positive_data_acceptance``: some rules are beyond JSON Schema (``expires_at`` in the
#: future, idempotency keys unique within a batch, a token's scope within its client's), so
#: the API rightly refuses some schema-valid requests.
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
    "negative_data_rejection",
    "ignored_auth",
)

#: Schemathesis reuses identifiers it has seen, in responses and in the bearer token (whose
#: ``sub`` is the client's id), as other operations' parameters: it would revoke or rotate its
#: own client (``/v1/admin/clients/{client_id}``) and get 401 for the rest of the run. Hence no
#: reuse, and no stateful phase (which chains operations the same way).
NO_REUSE = "".join(
    f"[phases.{phase}.extra-data-sources]\nresponses = false\n"
    for phase in ("examples", "coverage", "fuzzing")
)


@dataclass(frozen=True)
class Api:
    url: str
    token: str = field(repr=False)  # pytest prints fixture values with a failure


async def until_ready(http: httpx.AsyncClient, proc: Proc, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        assert proc.alive(), f"the api exited:\n{proc.tail()}"
        with contextlib.suppress(httpx.HTTPError):
            if (await http.get("/health/ready")).status_code == 200:
                return
        await asyncio.sleep(0.1)
    pytest.fail(f"the api was not ready within {within} s:\n{proc.tail()}")


async def drop(database_url: str, amqp_url: str, prefix: str) -> None:
    """The database, and the exchanges and queues the API declared: one per declared queue
    (the fuzzer declares some through the admin API)."""
    conn = await asyncpg.connect(dsn(database_url))
    try:
        queues = [row["name"] for row in await conn.fetch("SELECT name FROM queues")]
    finally:
        await conn.close()
    await drop_database(database_url)
    await delete_broker_objects(amqp_url, prefix, queues)


@pytest.fixture
async def api(database_url: str, amqp_url: str, tmp_path: Path) -> AsyncIterator[Api]:
    """The API on a fresh database, and a token of a client with every scope (made with the
    CLI, so the fuzzer never sees it created)."""
    database = await create_database(database_url, "jobq_fuzz")
    prefix = f"jobqfuzz{secrets.token_hex(3)}"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = clean_env(
        {
            "JOBQ_DATABASE_URL": database,
            "JOBQ_AMQP_URL": amqp_url,
            "JOBQ_BROKER_PREFIX": prefix,
            "JOBQ_JWT_SECRET": TEST_SECRET,
            "JOBQ_API_PORT": str(port),
            "JOBQ_MANAGEMENT_URL": "",
            # A lease request may wait 30 s for a job that never comes: not a fuzzer's time.
            "JOBQ_LEASE_MAX_WAIT_SECONDS": "0.2",
        }
    )
    proc = start("api", [sys.executable, "-m", "services", "api"], env, tmp_path)
    try:
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            await until_ready(http, proc)
            created = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "services", "clients", "create", "--name", "fuzzer",
                 "--tenant", "fuzz", "--scopes", "admin,jobs:write,jobs:read,jobs:work", "--json"],
                env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            assert created.returncode == 0, created.stderr
            client = json.loads(created.stdout)
            r = await http.post(
                "/v1/auth/token",
                data={"grant_type": "client_credentials"},
                auth=(client["client_id"], client["client_secret"]),
            )
            assert r.status_code == 200, r.text
        yield Api(url, r.json()["access_token"])
    finally:
        stop_all([proc])
        await drop(database, amqp_url, prefix)


def totals(report: Path) -> str:
    """The run's figures, as schemathesis reported them."""
    run = json.loads(report.read_text()) if report.exists() else {}
    if not run.get("operations"):  # it could not load the OpenAPI document, say
        return "schemathesis: the run did not start"
    operations, cases = run["operations"], run["test_cases"]
    errors = sum(error["count"] for error in run["errors"])
    return (
        f"schemathesis: {operations['tested']}/{operations['selected']} operations, "
        f"{cases['generated']} test cases, {cases['unique_failures']} failures, {errors} errors "
        f"in {run['running_time']:.1f} s (seed {run['seed']})"
    )


def findings(output: str, saved: Path, limit: int = 12_000) -> str:
    """Schemathesis's output from its first FAILURES or ERRORS section on, cut in the middle
    past ``limit`` characters."""
    first = re.search(r"^=+ (?:ERRORS|FAILURES) =+$", output, re.MULTILINE)
    text = output[first.start() :] if first else output
    if len(text) > limit:
        cut = len(text) - limit
        text = f"{text[: limit // 2]}\n[... {cut} characters cut: see {saved} ...]\n{text[-limit // 2 :]}"
    return text


def test_every_operation_answers_as_the_openapi_document_says(
    api: Api, tmp_path: Path, summary: Callable[[str], None]
) -> None:
    config, report, saved = (
        tmp_path / name for name in ("schemathesis.toml", "report.json", "schemathesis.txt")
    )
    config.write_text(NO_REUSE)
    done = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "--config-file", str(config),
         "run", f"{api.url}/schema/openapi.json",
         "--header", f"Authorization: Bearer {api.token}",
         "--checks", ",".join(CHECKS),
         "--phases", "examples,coverage,fuzzing",
         "--max-examples", "50", "--seed", "1",
         # One worker: Hypothesis parses lambdas' source as it generates, and Python 3.11's
         # AST constructor can fail under threads ("AST constructor recursion depth
         # mismatch", CPython gh-106905; seen here with two workers).
         "--workers", "1",
         "--continue-on-failure",
         "--rate-limit", "auto",  # a 429 is waited out for its Retry-After, then retried
         "--request-timeout", "10",
         "--generation-database", "none",
         "--no-color",
         "--report", "json", "--report-json-path", str(report)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    saved.write_text(done.stdout + done.stderr)
    summary(totals(report))
    exit_code = done.returncode  # not ``done``: pytest would print its arguments, token included
    assert exit_code == 0, findings(done.stdout + done.stderr, saved)
