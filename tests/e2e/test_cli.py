"""What ``make run`` shows a newcomer when a dependency is missing: one line with the fix."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from shared.config import Settings

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
