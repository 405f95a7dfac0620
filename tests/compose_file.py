"""docker-compose.yml as the deploy tests read it: its services, their environments (compose's
``${VAR:-default}`` interpolation resolved the way compose would with nothing set), the ports
each publishes and the ports each serves inside the network."""

from __future__ import annotations

import functools
import re
import shlex
from typing import Any

import yaml

from services.cli import build_parser
from shared.config import Settings
from tests.deploy_contract import ROOT, THIRD_PARTY_PORTS, served_ports

COMPOSE = ROOT / "docker-compose.yml"
JOBQ_SERVICES = ("migrate", "api", "scheduler", "worker")
#: ``${NAME}``, ``${NAME:-default}``, ``${NAME-default}``, ``${NAME:?error}``.
_INTERPOLATION = re.compile(r"\$\{(\w+)(?::?([-?])([^}]*))?\}")


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


def resolved(value: str) -> str:
    """``value`` as compose passes it with no variable set: defaults taken, and a required
    variable (``:?``) stood in for by a placeholder."""
    return _INTERPOLATION.sub(lambda m: m[3] if m[2] == "-" else "set-by-the-user", value)


def command(name: str) -> list[str]:
    given = services()[name].get("command")
    return shlex.split(given) if isinstance(given, str) else [str(c) for c in given or []]


def jobq_settings(name: str) -> Settings:
    """The settings a jobq service runs with (a malformed value is a ConfigError)."""
    return Settings.from_env({k: resolved(v) for k, v in environment(name).items()})


def container_ports(name: str) -> set[int]:
    """The container ports a service publishes (short ``[IP:]HOST:CONTAINER`` or long syntax)."""
    ports: set[int] = set()
    for port in services()[name].get("ports") or []:
        if isinstance(port, dict):
            ports.add(int(port["target"]))
        else:
            ports.add(int(str(port).rsplit(":", 1)[-1].split("/")[0]))
    return ports


def served_by(name: str) -> frozenset[int]:
    """The ports a service listens on inside the compose network."""
    if name in JOBQ_SERVICES:
        subcommand = build_parser().parse_args(command(name)).command
        return served_ports(subcommand, jobq_settings(name))
    return THIRD_PARTY_PORTS.get(name, frozenset())
