"""Static checks of docker-compose.yml and deploy/Dockerfile.

No Docker engine runs on the development machines or in CI, so the container setup is never
started by a test. These checks keep it from drifting away from the code instead: the services
and ports the docs promise exist, workers stay scalable, every ``JOBQ_*`` variable is a real
setting (a misspelt one would be silently ignored), every command is a real ``jobq``
subcommand, and the image installs exactly the hashed runtime lock (tests/test_locks.py holds
that lock to requirements.lock).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.cli import build_parser
from shared.config import Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
DEPLOY_README = ROOT / "deploy" / "README.md"
JOBQ_SERVICES = ("migrate", "api", "scheduler", "worker")
SETTINGS_VARS = frozenset(f"JOBQ_{f.name.upper()}" for f in dataclasses.fields(Settings))


@functools.cache
def services() -> dict[str, dict[str, Any]]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    found = data.get("services")
    assert isinstance(found, dict)
    return found


def environment(name: str) -> dict[str, str]:
    """A service's environment, from either compose spelling (mapping or ``KEY=VALUE`` list)."""
    env = services()[name].get("environment") or {}
    if isinstance(env, list):
        return dict(item.partition("=")[::2] for item in env)
    return {key: str(value) for key, value in env.items()}


def container_ports(name: str) -> set[int]:
    """The container ports a service publishes (short ``[IP:]HOST:CONTAINER`` or long syntax)."""
    ports: set[int] = set()
    for port in services()[name].get("ports") or []:
        if isinstance(port, dict):
            ports.add(int(port["target"]))
        else:
            ports.add(int(str(port).rsplit(":", 1)[-1].split("/")[0]))
    return ports


def tracing_ui() -> str:
    names = [n for n, s in services().items() if "jaeger" in str(s.get("image", ""))]
    assert names, "no tracing UI (jaeger) service"
    return names[0]


def dockerfile_exec_form(instruction: str) -> list[str]:
    """The JSON (exec form) argument of the Dockerfile's last ``instruction`` line."""
    lines = [ln for ln in DOCKERFILE.read_text().splitlines() if ln.startswith(instruction + " ")]
    assert lines, f"deploy/Dockerfile has no {instruction}"
    value = json.loads(lines[-1].removeprefix(instruction))
    assert isinstance(value, list)
    return [str(v) for v in value]


def test_services_exist() -> None:
    for name in ("postgres", "rabbitmq", *JOBQ_SERVICES):
        assert name in services(), f"no {name} service"
    tracing_ui()


def test_published_ports() -> None:
    assert 8080 in container_ports("api")
    assert {5672, 15672} <= container_ports("rabbitmq")
    assert 16686 in container_ports(tracing_ui())


@pytest.mark.parametrize("name", ["postgres", "rabbitmq", "api"])
def test_healthcheck(name: str) -> None:
    assert services()[name].get("healthcheck", {}).get("test"), f"{name} has no healthcheck"


def test_worker_is_scalable() -> None:
    worker = services()["worker"]
    assert "container_name" not in worker
    assert not worker.get("ports"), "a fixed host port breaks --scale worker=N"


@pytest.mark.parametrize("path", [COMPOSE, DOCKERFILE, DEPLOY_README], ids=lambda p: p.name)
def test_every_jobq_variable_is_a_setting(path: Path) -> None:
    named = set(re.findall(r"\bJOBQ_[A-Z0-9_]+", path.read_text()))
    assert named - SETTINGS_VARS == set(), "not fields of shared.config.Settings"


@pytest.mark.parametrize("name", JOBQ_SERVICES)
def test_service_has_required_env(name: str) -> None:
    env = environment(name)
    assert "@postgres:" in env.get("JOBQ_DATABASE_URL", "")
    assert "@rabbitmq:" in env.get("JOBQ_AMQP_URL", "")
    assert env.keys() & {"JOBQ_JWT_SECRET", "JOBQ_JWT_SECRET_FILE"}


@pytest.mark.parametrize("name", JOBQ_SERVICES)
def test_command_is_a_jobq_subcommand(name: str) -> None:
    command = services()[name].get("command")
    argv = shlex.split(command) if isinstance(command, str) else [str(c) for c in command or []]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"{name}: `jobq {' '.join(argv)}` is not a jobq command")
    assert args.command == name


@pytest.mark.parametrize("name", ["api", "scheduler", "worker"])
def test_services_start_after_migrations(name: str) -> None:
    depends_on = services()[name].get("depends_on", {})
    assert depends_on.get("migrate", {}).get("condition") == "service_completed_successfully"


def final_stage() -> str:
    """The Dockerfile's last stage: what the image holds."""
    return re.split(r"^FROM ", DOCKERFILE.read_text(), flags=re.MULTILINE)[-1]


def test_the_image_installs_the_runtime_lock_with_hashes() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^RUN .*--require-hashes.* requirements\.runtime\.lock$", text, re.MULTILINE)
    assert re.search(r"^COPY deploy/requirements\.runtime\.lock ", text, re.MULTILINE)
    assert not re.search(r"^COPY .*\brequirements\.lock", text, re.MULTILINE), "the dev lock"


def test_the_last_stage_holds_only_what_the_build_stage_installed() -> None:
    assert len(re.findall(r"^FROM ", DOCKERFILE.read_text(), re.MULTILINE)) >= 2
    final = final_stage()
    assert re.search(r"^COPY --from=build ", final, re.MULTILINE)
    installs = [
        ln for ln in final.splitlines() if ln.startswith("RUN ") and re.search(r"\b(pip|uv)\b", ln)
    ]
    assert not installs, "the final stage installs something itself"


def test_the_image_runs_as_a_numeric_non_root_user() -> None:
    users = re.findall(r"^USER (\S+)", final_stage(), re.MULTILINE)
    assert users, "the image runs as root"
    uid = users[-1].partition(":")[0]
    assert uid.isdigit(), "Kubernetes' runAsNonRoot can check only a numeric user"
    assert int(uid) != 0


def test_the_image_checks_its_health_with_jobq_health() -> None:
    lines = re.findall(r"^HEALTHCHECK .*\bCMD (\[.*\])$", DOCKERFILE.read_text(), re.MULTILINE)
    assert lines, "deploy/Dockerfile has no HEALTHCHECK in exec form"
    argv = json.loads(lines[-1])
    assert argv[0] == "jobq"
    assert build_parser().parse_args(argv[1:]).command == "health"


def test_the_entrypoint_is_jobq_and_the_command_a_subcommand() -> None:
    assert dockerfile_exec_form("ENTRYPOINT") == ["jobq"]
    build_parser().parse_args(dockerfile_exec_form("CMD"))
