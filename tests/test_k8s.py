"""deploy/k8s, statically: valid for Kubernetes, and true to the code.

No cluster is at hand, so the kustomization is built here (by kustomize when it is installed,
and always from its ``resources:`` list) and every document is validated against the
Kubernetes schemas kubernetes-validate ships, in strict mode (an unknown field is an error).
KEDA's ScaledObject is a custom resource those schemas do not hold: it is validated against
``SCALED_OBJECT`` below, a schema written from KEDA 2.20's CRD for the fields jobq uses, not
a copy of the CRD. Then each document is held to what jobq reads, serves and exports.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from services.cli import build_parser
from shared.config import Settings
from tests.deploy_contract import (
    READ_VARS,
    ROOT,
    THIRD_PARTY_PORTS,
    exported_metrics,
    promql_problems,
    queried_metrics,
    served_ports,
    url_ports,
)

K8S = ROOT / "deploy" / "k8s"
#: The oldest Kubernetes the manifests are for, and the newest kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.utils.latest_version())
WORKLOADS = ("Deployment", "Job")

_COUNT = {"type": "integer", "minimum": 0}
_SCALING_RULES = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "stabilizationWindowSeconds": {"type": "integer", "minimum": 0, "maximum": 3600},
        "selectPolicy": {"enum": ["Max", "Min", "Disabled"]},
        "policies": {"type": "array", "items": {"type": "object"}},
    },
}
#: KEDA's ``keda.sh/v1alpha1`` ScaledObject as its CRD types it (KEDA 2.20), with the
#: metadata KEDA's Prometheus scaler reads; unknown fields are refused, as the API server
#: refuses them from a structural schema.
SCALED_OBJECT: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "required": ["scaleTargetRef", "triggers"],
            "additionalProperties": False,
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": False,
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "name": {"type": "string", "minLength": 1},
                        "envSourceContainerName": {"type": "string"},
                    },
                },
                "pollingInterval": {"type": "integer", "minimum": 1},
                "cooldownPeriod": _COUNT,
                "initialCooldownPeriod": _COUNT,
                "idleReplicaCount": _COUNT,
                "minReplicaCount": _COUNT,
                "maxReplicaCount": _COUNT,
                "fallback": {
                    "type": "object",
                    "required": ["failureThreshold", "replicas"],
                    "additionalProperties": False,
                    "properties": {
                        "failureThreshold": _COUNT,
                        "replicas": _COUNT,
                        "behavior": {
                            "enum": [
                                "static",
                                "currentReplicas",
                                "currentReplicasIfHigher",
                                "currentReplicasIfLower",
                            ]
                        },
                    },
                },
                "advanced": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "restoreToOriginalReplicaCount": {"type": "boolean"},
                        "scalingModifiers": {"type": "object"},
                        "horizontalPodAutoscalerConfig": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "name": {"type": "string"},
                                "behavior": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "properties": {
                                        "scaleUp": _SCALING_RULES,
                                        "scaleDown": _SCALING_RULES,
                                    },
                                },
                            },
                        },
                    },
                },
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["type", "metadata"],
                        "additionalProperties": False,
                        "properties": {
                            "type": {"type": "string", "minLength": 1},
                            "name": {"type": "string"},
                            # KEDA's admission webhook takes these three only.
                            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                            "useCachedMetrics": {"type": "boolean"},
                            "authenticationRef": {"type": "object", "required": ["name"]},
                            "metadata": {
                                "type": "object",
                                "additionalProperties": {"type": "string"},
                            },
                        },
                        "if": {"properties": {"type": {"const": "prometheus"}}},
                        "then": {"properties": {"metadata": {"$ref": "#/$defs/prometheus"}}},
                    },
                },
            },
        },
    },
    "$defs": {
        "prometheus": {
            "required": ["serverAddress", "query", "threshold"],
            "additionalProperties": False,
            "properties": {
                "serverAddress": {"pattern": "^https?://"},
                "query": {"minLength": 1},
                "threshold": {"pattern": r"^[0-9]+(\.[0-9]+)?$"},
                "activationThreshold": {"pattern": r"^[0-9]+(\.[0-9]+)?$"},
                "ignoreNullValues": {"enum": ["true", "false"]},
                "unsafeSsl": {"enum": ["true", "false"]},
                "namespace": {},
                "queryParameters": {},
                "customHeaders": {},
                "timeout": {},
            },
        }
    },
}


@functools.cache
def documents() -> tuple[dict[str, Any], ...]:
    """The kustomization built from its ``resources:`` list, in order."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert set(kustomization) <= {"apiVersion", "kind", "resources"}, (
        "kustomization.yaml does more than list resources; this test cannot build it"
    )
    return tuple(
        doc
        for name in kustomization["resources"]
        for doc in yaml.safe_load_all((K8S / name).read_text())
        if doc
    )


def the(kind: str, name: str | None = None) -> list[dict[str, Any]]:
    found = [d for d in documents() if d["kind"] == kind]
    return [d for d in found if name is None or d["metadata"]["name"] == name]


def key(doc: dict[str, Any]) -> str:
    return f"{doc['kind']}/{doc['metadata']['name']}"


def containers() -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """Each workload's pod spec with each of its containers."""
    for doc in documents():
        if doc["kind"] in WORKLOADS:
            pod = doc["spec"]["template"]["spec"]
            for container in pod["containers"]:
                yield pod, container


def container_ids() -> list[str]:
    return [container["name"] for _, container in containers()]


def command(container: dict[str, Any]) -> str:
    args = build_parser().parse_args(container["args"])
    return str(args.command)


def environment(container: dict[str, Any]) -> dict[str, str]:
    """What the container's process sees: the ConfigMaps and Secrets it loads, then its env."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            (configmap,) = the("ConfigMap", source["configMapRef"]["name"])
            env.update(configmap["data"])
        if "secretRef" in source:
            (secret,) = the("Secret", source["secretRef"]["name"])
            env.update(secret["stringData"])
    env.update({item["name"]: item["value"] for item in container.get("env", [])})
    return env


def settings(container: dict[str, Any]) -> Settings:
    return Settings.from_env(environment(container))


def port_number(container: dict[str, Any], port: int | str) -> int:
    """A port given by number or by name, as one the container declares."""
    declared = {p.get("name"): int(p["containerPort"]) for p in container.get("ports", [])}
    number = declared.get(port) if isinstance(port, str) else port
    assert number is not None, f"{container['name']}: no port named {port}"
    assert number in declared.values(), f"{container['name']}: port {port} is not declared"
    return number


def test_every_manifest_file_is_a_resource_of_the_kustomization() -> None:
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(listed) == sorted(on_disk)


@pytest.mark.skipif(
    not (shutil.which("kubectl") or shutil.which("kustomize")), reason="no kubectl or kustomize"
)
def test_kustomize_builds_the_same_documents_as_this_test() -> None:
    tool = ["kustomize", "build"] if shutil.which("kustomize") else ["kubectl", "kustomize"]
    built = subprocess.run([*tool, str(K8S)], capture_output=True, text=True, check=True).stdout
    assert sorted(map(key, yaml.safe_load_all(built))) == sorted(map(key, documents()))
    by_key = {key(d): d for d in yaml.safe_load_all(built)}
    for doc in documents():
        assert by_key[key(doc)] == doc, key(doc)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("doc", [d for d in documents() if d["kind"] != "ScaledObject"], ids=key)
def test_every_document_is_valid_for_kubernetes(doc: dict[str, Any], version: str) -> None:
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(map(str, exc.path))
        pytest.fail(f"{key(doc)} on Kubernetes {version}: {path}: {exc.message}")


def test_the_scaled_object_is_valid_for_keda() -> None:
    (scaled,) = the("ScaledObject")
    jsonschema.Draft202012Validator.check_schema(SCALED_OBJECT)
    errors = list(jsonschema.Draft202012Validator(SCALED_OBJECT).iter_errors(scaled))
    assert not errors, [f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors]


def test_the_keda_schema_refuses_what_keda_refuses() -> None:
    (scaled,) = the("ScaledObject")
    broken = json.loads(json.dumps(scaled))
    broken["spec"]["triggers"][0]["metadata"]["treshold"] = "32"
    del broken["spec"]["scaleTargetRef"]["name"]
    broken["spec"]["maxReplicas"] = 5
    errors = list(jsonschema.Draft202012Validator(SCALED_OBJECT).iter_errors(broken))
    assert len(errors) == 3, [e.message for e in errors]


def test_workers_scale_on_the_most_any_scheduler_reports_of_ready_jobs() -> None:
    (scaled,) = the("ScaledObject")
    (worker,) = the("Deployment", scaled["spec"]["scaleTargetRef"]["name"])
    (container,) = worker["spec"]["template"]["spec"]["containers"]
    assert command(container) == "worker"
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    query = trigger["metadata"]["query"]
    assert queried_metrics(query) == {"jobq_queue_ready_jobs"}
    assert exported_metrics()["jobq_queue_ready_jobs"] == "gauge"
    assert query.startswith("max(")
    queues = set(re.findall(r'queue="([^"]+)"', query))
    assert queues, "the query names no queue"
    assert queues <= set(settings(container).consumed_queues), "a queue these workers never take"


@pytest.mark.skipif(not shutil.which("promtool"), reason="no promtool (Prometheus)")
def test_the_scaler_query_is_promql_prometheus_parses(tmp_path: Path) -> None:
    (scaled,) = the("ScaledObject")
    queries = [t["metadata"]["query"] for t in scaled["spec"]["triggers"]]
    assert promql_problems(queries, tmp_path) is None


def test_the_autoscaler_owns_the_worker_count() -> None:
    (scaled,) = the("ScaledObject")
    (worker,) = the("Deployment", scaled["spec"]["scaleTargetRef"]["name"])
    assert "replicas" not in worker["spec"], "an apply would reset what KEDA scaled"


@pytest.mark.parametrize(("pod", "container"), list(containers()), ids=container_ids())
def test_each_container_runs_the_jobq_command_it_is_named_for(
    pod: dict[str, Any], container: dict[str, Any]
) -> None:
    assert command(container) == container["name"]


def test_every_variable_a_container_is_given_is_one_jobq_reads() -> None:
    for _, container in containers():
        unread = set(environment(container)) - READ_VARS
        assert not unread, f"{container['name']}: not read by jobq"


def test_the_configmap_holds_valid_settings() -> None:
    for configmap in the("ConfigMap"):
        assert set(configmap["data"]) <= READ_VARS
        Settings.from_env(configmap["data"])


def test_the_secret_holds_only_placeholders_for_the_credentials_jobq_needs() -> None:
    (secret,) = the("Secret")
    values = secret["stringData"]
    assert {"JOBQ_JWT_SECRET", "JOBQ_DATABASE_URL", "JOBQ_AMQP_URL"} <= set(values)
    real = [name for name, value in values.items() if "CHANGE-ME" not in value]
    assert not real, "a real secret in deploy/k8s/secret.yaml"


def test_every_url_names_a_port_its_service_serves() -> None:
    for doc in documents():
        for host, port in url_ports(json.dumps(doc)):
            service = host.split(".")[0]
            assert service in THIRD_PARTY_PORTS, f"{key(doc)}: {host}"
            assert port in THIRD_PARTY_PORTS[service], f"{key(doc)}: {host}:{port}"


@pytest.mark.parametrize(("pod", "container"), list(containers()), ids=container_ids())
def test_each_container_declares_the_ports_its_command_serves(
    pod: dict[str, Any], container: dict[str, Any]
) -> None:
    declared = {p["containerPort"] for p in container.get("ports", [])}
    assert declared == served_ports(command(container), settings(container))


@pytest.mark.parametrize("deployment", the("Deployment"), ids=key)
def test_probes_ask_the_health_endpoints_on_a_served_port(deployment: dict[str, Any]) -> None:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    expected = {"startupProbe": "/health", "livenessProbe": "/health"}
    expected["readinessProbe"] = "/health/ready"
    for probe, path in expected.items():
        get = container[probe]["httpGet"]
        assert get["path"] == path, probe
        assert port_number(container, get["port"]) in served_ports(
            command(container), settings(container)
        )


@pytest.mark.parametrize("deployment", the("Deployment"), ids=key)
def test_prometheus_is_told_where_the_metrics_are(deployment: dict[str, Any]) -> None:
    template = deployment["spec"]["template"]
    (container,) = template["spec"]["containers"]
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    port = port_number(container, int(annotations["prometheus.io/port"]))
    assert port in served_ports(command(container), settings(container))
    if command(container) != "api":  # the API's port is named http: it serves the API too
        assert port_number(container, "metrics") == port


def test_the_api_service_sends_to_the_api_port() -> None:
    for service in the("Service"):
        (api,) = [
            d
            for d in the("Deployment")
            if d["spec"]["template"]["metadata"]["labels"].items()
            >= service["spec"]["selector"].items()
        ]
        (container,) = api["spec"]["template"]["spec"]["containers"]
        for port in service["spec"]["ports"]:
            target = port_number(container, port["targetPort"])
            assert port["port"] == target
            assert target in served_ports(command(container), settings(container))


@pytest.mark.parametrize("deployment", the("Deployment"), ids=key)
def test_every_deployment_has_a_disruption_budget(deployment: dict[str, Any]) -> None:
    selectors = [b["spec"]["selector"]["matchLabels"] for b in the("PodDisruptionBudget")]
    assert deployment["spec"]["selector"]["matchLabels"] in selectors


@pytest.mark.parametrize("deployment", the("Deployment"), ids=key)
def test_every_service_has_its_shutdown_grace_before_it_is_killed(
    deployment: dict[str, Any],
) -> None:
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    pause = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command")
    paused = float(pause[1]) if pause and pause[0] == "sleep" else 0.0
    grace = settings(container).shutdown_grace_seconds + paused
    assert pod.get("terminationGracePeriodSeconds", 30) > grace


@pytest.mark.parametrize(("pod", "container"), list(containers()), ids=container_ids())
def test_every_container_has_requests_and_limits(
    pod: dict[str, Any], container: dict[str, Any]
) -> None:
    for bound in ("requests", "limits"):
        assert set(container["resources"][bound]) >= {"cpu", "memory"}, bound


@pytest.mark.parametrize(("pod", "container"), list(containers()), ids=container_ids())
def test_every_container_runs_as_the_images_user_on_a_read_only_root(
    pod: dict[str, Any], container: dict[str, Any]
) -> None:
    image_user = re.findall(r"^USER (\d+)", (ROOT / "deploy" / "Dockerfile").read_text(), re.M)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert [str(pod["securityContext"]["runAsUser"])] == image_user[-1:]
    assert pod["automountServiceAccountToken"] is False
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert "/tmp" in {mount["mountPath"] for mount in container.get("volumeMounts", [])}


def test_the_migration_runs_as_a_job() -> None:
    (job,) = the("Job")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert command(container) == "migrate"
