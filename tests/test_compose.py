"""Static checks of docker-compose.yml and deploy/Dockerfile.

No Docker engine runs on the development machines or in CI, so the container setup is never
started by a test. These checks keep it from drifting away from the code instead: the services
and ports the docs promise exist, workers stay scalable, every ``JOBQ_*`` variable is a real
setting (a misspelt one would be silently ignored), every command is a real ``jobq``
subcommand, and the image installs exactly the hashed runtime lock (tests/test_locks.py holds
that lock to requirements.lock).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from services.cli import build_parser
from tests.compose_file import (
    COMPOSE,
    JOBQ_SERVICES,
    command,
    container_ports,
    environment,
    jobq_settings,
    served_by,
    services,
)
from tests.deploy_contract import READ_VARS, ROOT, SDK_VARS, THIRD_PARTY_PORTS, url_ports

DOCKERFILE = ROOT / "deploy" / "Dockerfile"
DEPLOY_README = ROOT / "deploy" / "README.md"
#: The services that run until stopped, and answer ``jobq health``.
LONG_RUNNING = ("api", "scheduler", "worker")


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
    for name in ("postgres", "rabbitmq", *JOBQ_SERVICES, "prometheus", "grafana"):
        assert name in services(), f"no {name} service"
    tracing_ui()


def test_published_ports() -> None:
    assert 8080 in container_ports("api")
    assert {5672, 15672} <= container_ports("rabbitmq")
    assert 16686 in container_ports(tracing_ui())
    assert 9090 in container_ports("prometheus")
    assert 3000 in container_ports("grafana")


@pytest.mark.parametrize("name", list(services()))
def test_every_published_port_is_one_its_service_serves(name: str) -> None:
    assert name in JOBQ_SERVICES or name in THIRD_PARTY_PORTS, f"{name}: whose ports?"
    assert container_ports(name) <= served_by(name)


@pytest.mark.parametrize("name", list(services()))
def test_every_url_in_an_environment_names_a_service_and_a_port_it_serves(name: str) -> None:
    for value in environment(name).values():
        for host, port in url_ports(value):
            assert host in services(), f"{name}: {host} is no service of docker-compose.yml"
            assert port in served_by(host), f"{name}: {host} does not serve {port}"


@pytest.mark.parametrize("name", ["postgres", "rabbitmq", *LONG_RUNNING])
def test_healthcheck(name: str) -> None:
    assert services()[name].get("healthcheck", {}).get("test"), f"{name} has no healthcheck"


@pytest.mark.parametrize("name", LONG_RUNNING)
def test_each_jobq_service_checks_its_own_health_with_jobq_health(name: str) -> None:
    test = services()[name]["healthcheck"]["test"]
    assert test[:2] == ["CMD", "jobq"]
    args = build_parser().parse_args(test[2:])
    assert (args.command, args.service) == ("health", name)


def test_the_migration_has_no_health_to_check() -> None:
    assert services()["migrate"]["healthcheck"] == {"disable": True}


def test_worker_is_scalable() -> None:
    worker = services()["worker"]
    assert "container_name" not in worker
    assert not worker.get("ports"), "a fixed host port breaks --scale worker=N"


@pytest.mark.parametrize("path", [COMPOSE, DOCKERFILE, DEPLOY_README], ids=lambda p: p.name)
def test_every_jobq_variable_is_one_jobq_reads(path: Path) -> None:
    named = set(re.findall(r"\bJOBQ_[A-Z0-9_]+", path.read_text()))
    assert named - READ_VARS == set(), "not Settings fields, nor read by the SDK"


def test_the_jobq_variables_beyond_settings_are_ones_the_sdk_reads() -> None:
    sdk = "".join(path.read_text() for path in (ROOT / "sdk" / "python" / "src").rglob("*.py"))
    assert all(f'"{name}"' in sdk for name in SDK_VARS)


@pytest.mark.parametrize("name", JOBQ_SERVICES)
def test_every_variable_a_jobq_service_is_given_is_one_jobq_reads(name: str) -> None:
    assert set(environment(name)) - READ_VARS == set()


@pytest.mark.parametrize("name", JOBQ_SERVICES)
def test_each_jobq_service_has_valid_settings(name: str) -> None:
    jobq_settings(name)


@pytest.mark.parametrize("name", ["scheduler", "worker"])
def test_metrics_are_served_on_the_container_network(name: str) -> None:
    assert jobq_settings(name).metrics_host == "0.0.0.0"


@pytest.mark.parametrize("name", JOBQ_SERVICES)
def test_service_has_required_env(name: str) -> None:
    env = environment(name)
    assert "@postgres:" in env.get("JOBQ_DATABASE_URL", "")
    assert "@rabbitmq:" in env.get("JOBQ_AMQP_URL", "")
    assert env.keys() & {"JOBQ_JWT_SECRET", "JOBQ_JWT_SECRET_FILE"}


@pytest.mark.parametrize("name", JOBQ_SERVICES)
def test_command_is_a_jobq_subcommand(name: str) -> None:
    argv = command(name)
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
