"""deploy/helm: the chart lints and renders with the real Helm engine (v4 Go SDK, offline), in both modes, and
what it renders validates against the Kubernetes schemas and agrees with the gateway config it generates."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from tests.deploy.k8s import (
    ROOT,
    check_gateway_pod,
    check_selectors,
    find,
    gateway_container,
    load_docs,
    validate,
)

CHART = ROOT / "deploy" / "helm" / "llm-gateway"
SIDECAR_VALUES = yaml.safe_load((CHART / "ci" / "sidecar-values.yaml").read_text())


def render(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    with helm.Chart.load(str(CHART)) as chart:
        out = chart.render(values or {}, name="demo", namespace="agents", is_install=True)
    return [doc for path, text in sorted(out.items()) if path.endswith(".yaml") for doc in load_docs(text)]


def gateway_workload(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = find(docs, "Deployment")
    return deployment


def test_chart_lints_clean() -> None:
    """`helm lint --strict` (same Go code) reports no warning or error for either values file."""
    for values in ({}, SIDECAR_VALUES):
        report = helm.lint(str(CHART), values, strict=True, kube_version="v1.33.0")
        assert report["errors"] == []
        assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("values", [{}, SIDECAR_VALUES], ids=["default", "sidecar"])
def test_rendered_manifests_validate_and_agree_with_the_config(
    values: dict[str, Any], tmp_path: Path
) -> None:
    """Every rendered resource is schema-valid;
    the generated config passes check-config and matches the pod."""
    docs = render(values)
    for doc in docs:
        assert validate(doc) == [], f"{doc['kind']}/{doc['metadata']['name']}"
    check_selectors(docs)
    check_gateway_pod(gateway_workload(docs), docs, tmp_path)


def test_default_values_render_the_shared_gateway() -> None:
    """Standalone mode: Deployment + Service + HPA + PDB + in-cluster Redis, no PodMonitor unless enabled."""
    docs = render()
    assert {d["kind"] for d in docs} == {"ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler",
                                         "PodDisruptionBudget", "StatefulSet"}
    _, sidecar = gateway_container(gateway_workload(docs)["spec"]["template"]["spec"])
    assert not sidecar
    assert "replicas" not in gateway_workload(docs)["spec"]  # the HPA owns the replica count
    (monitor,) = find(render({"metrics": {"podMonitor": {"enabled": True}}}), "PodMonitor")
    assert validate(monitor) == []


def test_sidecar_values_render_the_agent_with_a_native_sidecar() -> None:
    """Sidecar mode: the agent Deployment, the gateway as init container, keys from existing Secrets,
    no Service."""
    docs = render(SIDECAR_VALUES)
    kinds = {d["kind"] for d in docs}
    assert "Service" not in kinds and "HorizontalPodAutoscaler" not in kinds and "StatefulSet" not in kinds
    agent = gateway_workload(docs)
    assert agent["metadata"]["name"] == "research-agent"
    pod = agent["spec"]["template"]["spec"]
    container, sidecar = gateway_container(pod)
    assert sidecar and container["restartPolicy"] == "Always"
    refs = {
        (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
        for e in container["env"]
    }
    assert refs == {("llm-provider-keys", "OPENAI_API_KEY"), ("anthropic-creds", "api-key")}
    assert not find(docs, "Secret")  # keys come from Secrets that already exist
    config = yaml.safe_load(find(docs, "ConfigMap")[0]["data"]["config.yaml"])
    assert config["state"]["redis_url"] == "rediss://my-redis.cache.example.com:6380/0"
    # The pod's grace period also covers the agent's own shutdown: it stops before the gateway.
    assert pod["terminationGracePeriodSeconds"] == 2 + 2 + 25 + 5 + 25


def test_sidecar_runs_one_worker_unless_told_otherwise() -> None:
    """Sidecar mode: server.workers defaults to 1; an explicit value wins; standalone keeps one per CPU."""
    def workers(values: dict[str, Any]) -> Any:
        config = yaml.safe_load(find(render(values), "ConfigMap")[0]["data"]["config.yaml"])
        return config["server"]["workers"]

    sidecar = {k: v for k, v in SIDECAR_VALUES.items() if k != "server"}
    assert workers(sidecar) == 1
    assert workers({**sidecar, "server": {"workers": 3}}) == 3
    assert workers({}) is None  # standalone: null, one worker per CPU of the limit


def test_probes_ports_and_grace_follow_the_server_values(tmp_path: Path) -> None:
    """Changing server.port, drainSeconds and metrics.port moves probes,
    ports and the grace period with them."""
    values = {"server": {"port": 9000, "drainSeconds": 50, "graceSeconds": 0.5}, "metrics": {"port": 9100},
              "extraConfig": {"passthrough": True}}
    docs = render(values)
    config = check_gateway_pod(gateway_workload(docs), docs, tmp_path)
    assert (config.server.port, config.server.drain_s, config.metrics.port) == (9000, 50.0, 9100)
    assert config.passthrough is True
    # ceil(60.5)
    assert gateway_workload(docs)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 61


def test_an_unknown_mode_fails_the_render() -> None:
    """A typo in `mode` is an error, not a silently empty release."""
    with pytest.raises(helm.HelmError):
        render({"mode": "sidecars"})
