"""deploy/k8s: every manifest validates offline, kustomize builds, and the pods agree with their config."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.deploy.k8s import (
    ROOT,
    check_gateway_pod,
    check_restricted,
    check_selectors,
    find,
    gateway_container,
    kustomize,
    load_docs,
    validate,
)

K8S = ROOT / "deploy" / "k8s"
MANIFESTS = sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")
VARIANTS = ("sidecar", "standalone")


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: str(p.relative_to(K8S)))
def test_every_manifest_validates_against_the_kubernetes_schemas(path: Path) -> None:
    """Each YAML document in deploy/k8s passes the strict OpenAPI schemas (1.33 and latest), offline."""
    docs = load_docs(path.read_text())
    assert docs
    for doc in docs:
        assert validate(doc) == [], f"{path.name}: {doc['kind']}/{doc['metadata']['name']}"


def test_a_typo_in_a_manifest_is_caught() -> None:
    """The validator is strict: an unknown field or a wrong type fails (so the test above means something)."""
    (deployment,) = find(kustomize(K8S / "sidecar"), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    pod["initContainers"][0]["restartPolicy"] = "Always"
    pod["initContainers"][0]["livenessProbe"]["httpGet"]["pathh"] = "/healthz"
    pod["terminationGracePeriodSeconds"] = "sixty"
    errors = validate(deployment)
    assert any("pathh" in e for e in errors) and any("sixty" in e for e in errors)


@pytest.mark.parametrize("variant", VARIANTS)
def test_kustomization_builds_and_every_resource_validates(variant: str) -> None:
    """`kubectl kustomize` builds the variant (as `kubectl apply -k` would) and every output is valid."""
    docs = kustomize(K8S / variant)
    kinds = {d["kind"] for d in docs}
    assert {"ConfigMap", "Secret", "Deployment", "PodMonitor", "StatefulSet", "Service"} <= kinds
    for doc in docs:
        assert validate(doc) == [], f"{doc['kind']}/{doc['metadata']['name']}"
    check_selectors(docs)


@pytest.mark.parametrize("variant", VARIANTS)
def test_gateway_pod_agrees_with_its_config(variant: str, tmp_path: Path) -> None:
    """check-config passes on the ConfigMap; ports, probes and grace period match server.* and
    metrics.port."""
    docs = kustomize(K8S / variant)
    gateways = [d for d in find(docs, "Deployment") if _has_gateway(d)]
    assert len(gateways) == 1
    config = check_gateway_pod(gateways[0], docs, tmp_path)
    assert config.state.backend == "redis"
    (redis_svc,) = find(docs, "Service", "gateway-redis")
    assert (
        f"//{redis_svc['metadata']['name']}:{redis_svc['spec']['ports'][0]['port']}/"
        in config.state.redis_url
    )


def test_sidecar_is_native_and_the_agent_uses_it() -> None:
    """The gateway is an init container with restartPolicy Always; the agent has OPENAI_BASE_URL,
    no provider key."""
    docs = kustomize(K8S / "sidecar")
    (agent,) = find(docs, "Deployment", "agent")
    pod = agent["spec"]["template"]["spec"]
    container, sidecar = gateway_container(pod)
    assert sidecar and container["restartPolicy"] == "Always"
    (main,) = pod["containers"]
    refs = [e for e in main.get("env", []) if "valueFrom" in e]
    assert refs == []  # the provider key is only in the gateway's environment
    assert find(docs, "NetworkPolicy")


def test_standalone_has_service_hpa_and_pdb() -> None:
    """The shared variant scales on CPU, keeps one pod during disruptions and authenticates its clients."""
    docs = kustomize(K8S / "standalone")
    (hpa,) = find(docs, "HorizontalPodAutoscaler")
    (pdb,) = find(docs, "PodDisruptionBudget")
    (deployment,) = find(docs, "Deployment", "llm-gateway")
    assert hpa["spec"]["minReplicas"] >= 2 and pdb["spec"]["maxUnavailable"] == 1
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    (svc,) = find(docs, "Service", "llm-gateway")
    assert {p["targetPort"] for p in svc["spec"]["ports"]} == {"gw-http", "gw-metrics"}


def test_redis_example_is_restricted_too() -> None:
    """The example Redis runs non-root with a read-only root filesystem and no persistence."""
    (sts,) = find(kustomize(K8S / "redis"), "StatefulSet")
    check_restricted(sts["spec"]["template"]["spec"])
    assert "--save" in sts["spec"]["template"]["spec"]["containers"][0]["args"]


def _has_gateway(doc: dict) -> bool:  # type: ignore[type-arg]
    pod = doc["spec"]["template"]["spec"]
    return any(c["name"] == "llm-gateway" for c in [*pod.get("initContainers", []), *pod["containers"]])
