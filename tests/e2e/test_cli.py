"""What ``make run`` shows a newcomer when a dependency is missing: one line with the fix."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from shared.config import Settings
from tests.services import dsn

pytestmark = pytest.mark.e2e


def init(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services", "init", "--secret-file", str(tmp_path / "secret"),
         "--admin-file", str(tmp_path / "admin.json")],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_an_unreachable_postgresql_is_one_line_with_the_fix(tmp_path: Path) -> None:
    done = init(tmp_path, JOBQ_DATABASE_URL="postgresql+asyncpg://postgres@127.0.0.1:1/jobq")
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert "Traceback" not in done.stderr
    assert "PostgreSQL" in done.stderr
    assert "pg_ctlcluster" in done.stderr


def test_an_unreachable_rabbitmq_is_one_line_with_the_fix(
    tmp_path: Path, base_settings: Settings
) -> None:
    done = init(
        tmp_path,
        JOBQ_DATABASE_URL=base_settings.database_url,
        JOBQ_AMQP_URL="amqp://guest:guest@127.0.0.1:1/",
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert "Traceback" not in done.stderr
    assert "RabbitMQ" in done.stderr
    assert "rabbitmq-server" in done.stderr
    assert "guest:guest" not in done.stderr  # no password in messages


def test_init_creates_an_admin_once_and_never_prints_its_secret_again(
    tmp_path: Path, base_settings: Settings, clean: None
) -> None:
    env = {"JOBQ_DATABASE_URL": base_settings.database_url, "JOBQ_AMQP_URL": base_settings.amqp_url,
           "JOBQ_BROKER_PREFIX": base_settings.broker_prefix}  # fmt: skip
    first = init(tmp_path, **env)
    assert first.returncode == 0, first.stderr
    secret = (tmp_path / "admin.json").read_text()
    assert "client_secret" in secret
    assert len((tmp_path / "secret").read_text()) >= 32
    again = init(tmp_path, **env)
    assert again.returncode == 0
    assert "an admin client exists" in again.stdout
    assert "jqs_" not in again.stdout


def test_clients_show_their_callback_secret_once_and_rotate_it(
    base_settings: Settings, clean: None
) -> None:
    env = {**os.environ, "JOBQ_DATABASE_URL": base_settings.database_url}

    def jobq(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "services", "clients", *args], env=env, capture_output=True,
            text=True, timeout=60, check=False,
        )  # fmt: skip

    created = jobq(
        "create", "--name", "shop", "--tenant", "acme", "--scopes", "jobs:write", "--json"
    )
    assert created.returncode == 0, created.stderr
    client = json.loads(created.stdout)
    assert client["callback_secret"].startswith("jqcb_")
    rotated = jobq("rotate-callback-secret", client["client_id"], "--grace", "0", "--json")
    assert rotated.returncode == 0, rotated.stderr
    answer = json.loads(rotated.stdout)
    assert answer["callback_secret"].startswith("jqcb_")
    assert answer["callback_secret"] != client["callback_secret"]
    assert answer["previous_valid_until"] is None
    listed = jobq("list")
    assert "jqcb_" not in listed.stdout
    unknown = jobq("rotate-callback-secret", "00000000-0000-0000-0000-000000000001")
    assert (unknown.returncode, unknown.stderr) == (1, "no such client\n")


def test_a_worker_for_an_undeclared_queue_is_one_line_and_exit_2(
    base_settings: Settings, clean: None
) -> None:
    env = {"JOBQ_DATABASE_URL": base_settings.database_url, "JOBQ_AMQP_URL": base_settings.amqp_url,
           "JOBQ_BROKER_PREFIX": base_settings.broker_prefix}  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "services", "worker", "--queues", "default,nowhere"],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("jobq: queue(s) nowhere not declared"), done.stderr
    assert "Traceback" not in done.stderr


@pytest.fixture
async def password_user(base_settings: Settings) -> AsyncIterator[str]:
    """A role that must give a password over TCP, as on a stock PostgreSQL (a line put first
    in the server's pg_hba.conf for this role alone, taken out afterwards)."""
    conn = await asyncpg.connect(dsn(base_settings.database_url))
    try:
        hba = Path(await conn.fetchval("SHOW hba_file"))
        if not os.access(hba, os.W_OK):
            pytest.skip("the server's pg_hba.conf is not writable from here")
        role = f"jobq_pw_{secrets.token_hex(3)}"
        await conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{secrets.token_hex(8)}'")
        original = await asyncio.to_thread(hba.read_text)
        first = f"host all {role} 127.0.0.1/32 scram-sha-256\n"
        await asyncio.to_thread(hba.write_text, first + original)
        await conn.execute("SELECT pg_reload_conf()")
        try:
            yield role
        finally:
            await asyncio.to_thread(hba.write_text, original)
            await conn.execute("SELECT pg_reload_conf()")
            await conn.execute(f"DROP ROLE {role}")
    finally:
        await conn.close()


@pytest.mark.parametrize("password", ["", ":wrong"])
def test_a_password_postgresql_asks_for_is_one_line_with_the_fix(
    tmp_path: Path, password_user: str, password: str
) -> None:
    url = f"postgresql+asyncpg://{password_user}{password}@127.0.0.1:5432/jobq"
    done = init(tmp_path, JOBQ_DATABASE_URL=url)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert f"refused user '{password_user}'" in done.stderr
    assert "createuser" in done.stderr
    assert "wrong" not in done.stderr


def test_a_missing_database_says_to_run_init(base_settings: Settings) -> None:
    url = base_settings.database_url.rsplit("/", 1)[0] + "/jobq_never_created"
    done = subprocess.run(
        [sys.executable, "-m", "services", "worker"],
        env={**os.environ, "JOBQ_DATABASE_URL": url}, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert "has no database 'jobq_never_created': run `jobq init`" in done.stderr


@pytest.mark.parametrize(
    ("fault", "says"),
    [("password", "refused the login (ACCESS_REFUSED)"), ("vhost", "refused the virtual host")],
)
def test_a_broker_that_refuses_jobq_is_one_line_with_the_fix(
    tmp_path: Path, base_settings: Settings, clean: None, fault: str, says: str
) -> None:
    parts = urlsplit(base_settings.amqp_url)
    if fault == "password":
        parts = parts._replace(
            netloc=f"{parts.username}:wrong@{parts.hostname}:{parts.port or 5672}"
        )
    else:
        parts = parts._replace(path="/nosuchvhost")
    done = init(
        tmp_path,
        JOBQ_DATABASE_URL=base_settings.database_url,
        JOBQ_BROKER_PREFIX=base_settings.broker_prefix,
        JOBQ_AMQP_URL=urlunsplit(parts),
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert says in done.stderr
    assert "wrong" not in done.stderr
