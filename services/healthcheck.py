"""``jobq health``: does this container's service answer its ``/health`` (or ``/health/ready``)?

Docker's HEALTHCHECK and compose run a command, not an HTTP probe, and the slim image has no
curl. The check runs every few seconds in every container, the worker's included, so it uses
the standard library only and never imports Litestar. Where each service answers is
docs/operations.md §1; exit codes are Docker's: 0 healthy, 1 not (never 2, which Docker
reserves), whatever went wrong, a bad setting included.
"""

from __future__ import annotations

import itertools
import os
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from shared.config import Settings
from shared.errors import ConfigError

SERVICES = ("api", "worker", "scheduler")
#: The first process of a container: ``jobq <service>``, the image's entrypoint and command.
CONTAINER_COMMAND = Path("/proc/1/cmdline")
#: Addresses that mean "every interface" are asked on loopback.
_ANY_ADDRESS = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}


def health_url(settings: Settings, service: str, *, ready: bool) -> str | None:
    """Where ``service`` answers, or None when its port is 0 (its endpoints are off)."""
    if service == "api":
        host, port = settings.api_host, settings.api_port
    elif service == "worker":
        host, port = settings.metrics_host, settings.worker_metrics_port
    else:
        host, port = settings.metrics_host, settings.scheduler_metrics_port
    if port == 0:
        return None
    host = _ANY_ADDRESS.get(host, host)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/health{'/ready' if ready else ''}"


def container_service(cmdline: Path = CONTAINER_COMMAND) -> str | None:
    """The service a container runs: the argument after ``jobq`` on its first process's
    command line (``python /opt/jobq/bin/jobq worker``, or behind an init such as tini)."""
    try:
        argv = cmdline.read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return None
    for program, command in itertools.pairwise(argv):
        if Path(program).name == "jobq":
            return command if command in SERVICES else None
    return None


def answer(url: str, timeout: float) -> str | None:
    """None if ``url`` answers 2xx, else why not, in one line."""
    # No proxy: an HTTP_PROXY in the container's environment must not carry a loopback probe.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout):
            return None
    except urllib.error.HTTPError as exc:
        exc.close()
        return f"{url} answered {exc.code}"
    except (OSError, ValueError) as exc:  # refused, unreachable, timed out
        return f"{url}: {getattr(exc, 'reason', exc)}"


def probe(
    service: str | None,
    *,
    ready: bool = False,
    timeout: float = 3.0,
    env: Mapping[str, str] = os.environ,
    cmdline: Path = CONTAINER_COMMAND,
) -> tuple[bool, str]:
    """Whether ``service`` (by default the container's) is healthy, and a line that says so."""
    try:
        settings = Settings.from_env(env)
    except ConfigError as exc:
        return False, f"jobq health: {exc}"
    service = service or container_service(cmdline)
    if service is None:
        return False, "jobq health: name the service (api, worker or scheduler)"
    url = health_url(settings, service, ready=ready)
    if url is None:
        return False, f"jobq health: the {service}'s health endpoints are off (its port is 0)"
    problem = answer(url, timeout)
    return problem is None, problem or f"{url}: ok"
