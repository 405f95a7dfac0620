"""What the deployment files may name, read from the code and from docs/operations.md.

docker-compose.yml, deploy/k8s and the Prometheus and Grafana files name variables, ports and
metrics. The deploy tests hold each one to what jobq reads, serves and exports, so a misspelt
variable (silently ignored at run time), a port nothing listens on or a metric that does not
exist fails a test instead of a deployment.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from urllib.parse import urlsplit

import opentelemetry.sdk.environment_variables as otel_environment
import yaml

from shared.config import Settings

ROOT = Path(__file__).resolve().parent.parent
OPERATIONS = ROOT / "docs" / "operations.md"

SETTINGS_VARS = frozenset(f"JOBQ_{f.name.upper()}" for f in dataclasses.fields(Settings))
#: Read by the Python SDK (``jobq.Client.from_env``, ``jobq-http-worker``), not by Settings.
SDK_VARS = frozenset({"JOBQ_URL", "JOBQ_CLIENT_ID", "JOBQ_CLIENT_SECRET"})
#: The standard variables of the OpenTelemetry SDK that shared/telemetry.py configures.
OTEL_VARS = frozenset(name for name in dir(otel_environment) if name.startswith("OTEL_"))
#: Every variable a jobq container may be given.
READ_VARS = SETTINGS_VARS | SDK_VARS | OTEL_VARS

#: The ports of the third-party services beside jobq, by the name they run under.
THIRD_PARTY_PORTS: Mapping[str, frozenset[int]] = {
    "postgres": frozenset({5432}),
    "rabbitmq": frozenset({5672, 15672}),  # AMQP, management
    "prometheus": frozenset({9090}),
    "grafana": frozenset({3000}),
    "jaeger": frozenset({16686, 4317, 4318}),  # UI, OTLP over gRPC and HTTP
}
_URL = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s\"',]+")


def served_ports(command: str, settings: Settings) -> frozenset[int]:
    """The ports ``jobq <command>`` listens on with these settings (docs/operations.md §1)."""
    ports = {
        "api": settings.api_port,
        "worker": settings.worker_metrics_port,
        "scheduler": settings.scheduler_metrics_port,
    }
    return frozenset({ports[command]} - {0}) if command in ports else frozenset()


def url_ports(value: str) -> list[tuple[str, int]]:
    """The host and port of every URL in ``value`` that names its port."""
    found = []
    for url in _URL.findall(value):
        parts = urlsplit(url)
        if parts.hostname and parts.port:
            found.append((parts.hostname, parts.port))
    return found


def exported_metrics() -> dict[str, str]:
    """docs/operations.md §2: every metric's name and type."""
    rows = re.findall(
        r"^\| `(jobq_[a-z0-9_]+)` \| (counter|gauge|histogram) \|",
        OPERATIONS.read_text(),
        re.MULTILINE,
    )
    return dict(rows)


def queried_metrics(expr: str) -> set[str]:
    """The jobq metrics a PromQL expression reads; a histogram's series count as the histogram."""
    metrics = exported_metrics()
    found = set()
    for name in re.findall(r"\bjobq_[a-z0-9_]+", expr):
        histogram = re.sub(r"_(bucket|sum|count)$", "", name)
        found.add(histogram if metrics.get(histogram) == "histogram" else name)
    return found


def promql_problems(exprs: Iterable[str], workdir: Path) -> str | None:
    """What Prometheus's own parser (``promtool check rules``) says of these expressions, each
    made a recording rule; None when it accepts them all."""
    promtool = shutil.which("promtool")
    assert promtool, "no promtool"
    rules = [{"record": f"jobq:check:{i}", "expr": expr} for i, expr in enumerate(exprs)]
    path = workdir / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "check", "rules": rules}]}))
    done = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    return None if done.returncode == 0 else done.stdout + done.stderr
