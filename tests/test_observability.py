"""Prometheus and Grafana in docker-compose.yml, statically.

Prometheus must scrape every jobq service where it serves ``/metrics`` (every replica of a
scaled one), and Grafana's provisioned dashboard may query only the metrics docs/operations.md
lists, through the datasource provisioned beside it: a renamed metric or a moved port shows up
here, not as an empty panel.
"""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from tests.compose_file import served_by, services
from tests.deploy_contract import (
    ROOT,
    exported_metrics,
    promql_problems,
    queried_metrics,
    url_ports,
)

DEPLOY = ROOT / "deploy"
PROMETHEUS = DEPLOY / "prometheus.yml"
GRAFANA = DEPLOY / "grafana"
DASHBOARDS = GRAFANA / "dashboards"
SCRAPED = {"api", "scheduler", "worker"}
#: Grafana's variables, as a query would see them with every queue chosen.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$queue": ".*"}
no_promtool = pytest.mark.skipif(not shutil.which("promtool"), reason="no promtool (Prometheus)")
#: What an operator watches (docs/operations.md §2); the dashboard must show each.
WATCHED = {
    "jobq_queue_ready_jobs",
    "jobq_queue_oldest_ready_age_seconds",
    "jobq_jobs_submitted_total",
    "jobq_jobs_succeeded_total",
    "jobq_jobs_failed_total",
    "jobq_jobs_dead_total",
    "jobq_job_run_seconds",
    "jobq_job_queue_wait_seconds",
    "jobq_queue_unconfirmed_tickets",
    "jobq_dead_letter_messages",
    "jobq_worker_in_flight_jobs",
}


def load(path: str) -> Any:
    return yaml.safe_load((DEPLOY / path).read_text())


def mounts(service: str) -> dict[str, str]:
    """A compose service's bind mounts: container path -> repository path."""
    found = {}
    for volume in services()[service].get("volumes", []):
        source, target = str(volume).split(":")[:2]
        found[target] = str(PurePosixPath(source))
    return found


@functools.cache
def dashboards() -> dict[str, dict[str, Any]]:
    return {path.name: json.loads(path.read_text()) for path in DASHBOARDS.glob("*.json")}


def panel_queries(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]


def queries(dashboard: dict[str, Any]) -> list[str]:
    """Every query of a dashboard: its panels' PromQL and its variables' label queries."""
    found = panel_queries(dashboard)
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        found.append(query["query"] if isinstance(query, dict) else str(query))
    return found


def datasource_uid() -> str:
    (datasource,) = load("grafana/provisioning/datasources/prometheus.yml")["datasources"]
    return str(datasource["uid"])


def test_operations_md_lists_the_metrics() -> None:
    assert set(exported_metrics()) >= WATCHED


def test_compose_runs_prometheus_with_this_config() -> None:
    assert mounts("prometheus")["/etc/prometheus/prometheus.yml"] == "deploy/prometheus.yml"


def test_prometheus_scrapes_every_jobq_service_on_the_port_it_serves_metrics_on() -> None:
    scraped = set()
    for job in yaml.safe_load(PROMETHEUS.read_text())["scrape_configs"]:
        assert job.get("metrics_path", "/metrics") == "/metrics", job["job_name"]
        for discovery in job["dns_sd_configs"]:
            assert discovery["type"] == "A"
            for name in discovery["names"]:
                assert name in services(), f"{name} is no service of docker-compose.yml"
                assert discovery["port"] in served_by(name), f"{name} serves no {discovery['port']}"
                scraped.add(name)
    assert scraped == SCRAPED


@no_promtool
def test_prometheus_accepts_its_config() -> None:
    done = subprocess.run(
        ["promtool", "check", "config", str(PROMETHEUS)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_prometheus_finds_replicas_by_service_name_so_scaled_workers_are_scraped() -> None:
    config = yaml.safe_load(PROMETHEUS.read_text())
    assert not any("static_configs" in job for job in config["scrape_configs"])
    assert not services()["worker"].get("ports"), "a fixed port breaks --scale worker=N"


def test_grafanas_datasource_is_the_compose_prometheus() -> None:
    (datasource,) = load("grafana/provisioning/datasources/prometheus.yml")["datasources"]
    assert datasource["type"] == "prometheus"
    ((host, port),) = url_ports(datasource["url"])
    assert host == "prometheus"
    assert port in served_by("prometheus")


def test_grafana_loads_the_dashboards_compose_mounts() -> None:
    grafana = mounts("grafana")
    assert grafana["/etc/grafana/provisioning"] == "deploy/grafana/provisioning"
    (provider,) = load("grafana/provisioning/dashboards/jobq.yml")["providers"]
    assert grafana[provider["options"]["path"]] == "deploy/grafana/dashboards"
    home = PurePosixPath(
        services()["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    )
    assert str(home.parent) == provider["options"]["path"]
    assert home.name in dashboards()


@pytest.mark.parametrize("name", sorted(dashboards()))
def test_the_dashboard_queries_only_metrics_operations_md_lists(name: str) -> None:
    for expr in queries(dashboards()[name]):
        metrics = queried_metrics(expr)
        assert metrics, f"queries no jobq metric: {expr}"
        assert metrics <= set(exported_metrics()), expr


def test_the_dashboard_shows_what_an_operator_watches() -> None:
    shown = {m for d in dashboards().values() for expr in queries(d) for m in queried_metrics(expr)}
    assert shown >= WATCHED


@pytest.mark.parametrize("name", sorted(dashboards()))
def test_every_panel_reads_the_provisioned_datasource(name: str) -> None:
    dashboard = dashboards()[name]
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels), "panel ids repeat"
    for panel in panels:
        uids = {panel["datasource"]["uid"], *(t["datasource"]["uid"] for t in panel["targets"])}
        assert uids == {datasource_uid()}, panel["title"]


@no_promtool
@pytest.mark.parametrize("name", sorted(dashboards()))
def test_every_panel_query_is_promql_prometheus_parses(name: str, tmp_path: Path) -> None:
    exprs = []
    for expr in panel_queries(dashboards()[name]):
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, f"a Grafana variable this test does not know: {expr}"
        exprs.append(expr)
    assert promql_problems(exprs, tmp_path) is None
