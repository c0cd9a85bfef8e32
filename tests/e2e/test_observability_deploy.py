"""The Grafana dashboard and Prometheus rules refer only to metrics the gateway really exports, and parse."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import yaml

from gateway.mock import MockServer
from tests.support.servers import ROOT, InProcessGateway, RedisServer

GatewayFactory = Callable[..., Awaitable[InProcessGateway]]
RULES = ROOT / "deploy" / "prometheus" / "rules.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "gateway-dashboard.json"
_NAME = re.compile(r"\bgateway_[a-z0-9_]+")
_SUFFIX = re.compile(r"_(bucket|sum|count|total)$")
# Grafana variables replaced by values Prometheus accepts, so promtool can parse the dashboard queries.
_GRAFANA_VARS = {"$__rate_interval": "5m", "$__range": "1h", "$model": ".*", "$upstream": ".*"}


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


def rule_exprs() -> list[str]:
    return [r["expr"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


async def test_every_referenced_metric_is_exported(make_gateway: GatewayFactory, mock_upstream: MockServer,
                                                   tmp_path: Path, redis_server: RedisServer) -> None:
    """Each gateway_* name in the dashboard and rules is a family registered by a gateway with
    every feature on (a shared state backend included: its gauge comes with it)."""
    gw = await make_gateway(
        upstreams={"mock": {"base_url": mock_upstream.url, "rate_limit": {"rpm": 1000}}},
        models={"gpt-4o": {"context_window": 128000}},
        ledger={"enabled": True, "sqlite_path": str(tmp_path / "l")},
        state={"backend": "redis", "redis_url": redis_server.url, "key_prefix": "deploy-metrics:"},
    )
    families = {m.name for m in gw.state.metrics.registry.collect()}
    used = {
        _SUFFIX.sub("", name) for expr in dashboard_exprs() + rule_exprs() for name in _NAME.findall(expr)
    }
    assert used and not sorted(used - families)
    for issue_name in (
        "gateway_requests",
        "gateway_request_duration_seconds",
        "gateway_time_to_first_token_seconds",
        "gateway_inter_token_latency_seconds",
        "gateway_overhead_seconds",
        "gateway_tokens",
        "gateway_cost_usd",
        "gateway_inflight_requests",
        "gateway_circuit_state",
        "gateway_retries",
    ):
        assert issue_name in used, issue_name


def test_dashboard_shape() -> None:
    """The dashboard is importable JSON: unique panel ids, a Prometheus datasource variable,
    no overlaps in rows."""
    dash = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)) and dash["uid"] == "llm-gateway"
    assert any(v["type"] == "datasource" and v["query"] == "prometheus" for v in dash["templating"]["list"])
    titles = " ".join(p["title"] for p in dash["panels"]).lower()
    for needed in (
        "time to first token",
        "inter-token",
        "tokens/s",
        "cost",
        "cache hit",
        "retries",
        "circuit breaker",
        "overhead",
        "in-flight",
    ):
        assert needed in titles, needed


@pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool (Debian package prometheus) not installed"
)
def test_promtool_accepts_rules_and_dashboard_queries(tmp_path: Path) -> None:
    """promtool parses the rules file and every dashboard query (Grafana variables substituted)."""
    check = subprocess.run(
        ["promtool", "check", "rules", str(RULES)], check=False, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    exprs = []
    for expr in dashboard_exprs():
        for var, value in _GRAFANA_VARS.items():
            expr = expr.replace(var, value)
        exprs.append(expr)
    probe = tmp_path / "dashboard-rules.yaml"
    probe.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query{i}", "expr": e} for i, e in enumerate(exprs)]}]}))
    check = subprocess.run(
        ["promtool", "check", "rules", str(probe)], check=False, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool (Debian package prometheus) not installed"
)
def test_alerts_fire_on_scripted_series() -> None:
    """promtool's rule unit tests: breaker open, 5xx ratio and TTFT p95 regression fire when they should."""
    run = subprocess.run(
        ["promtool", "test", "rules", "rules_test.yaml"],
        cwd=RULES.parent,
        check=False,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout + run.stderr
