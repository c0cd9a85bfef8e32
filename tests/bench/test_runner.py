"""bench.runner: which gateway process a target names (no process is started here)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from bench import procs, runner


@dataclass
class _Server:
    url: str
    pid: int = 0
    meta: dict[str, Any] = field(default_factory=dict)


def test_cores_target_starts_the_gateway_as_make_run_does(monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[tuple[str, int | None]] = []

    def start_gateway(name: str, config: dict[str, Any], workers: int | None = None, **_: Any) -> _Server:
        started.append((name, workers))
        return _Server(url=f"http://gw-{len(started)}")

    monkeypatch.setattr(procs, "start_gateway", start_gateway)
    monkeypatch.setattr(procs, "descendants", lambda pid: [])
    env = runner.Env(use_nginx=False)
    env.servers["mock"] = _Server(url="http://mock")  # type: ignore[assignment]

    one = env.resolve("gw-default")
    cores = env.resolve("gw-default:cores")
    again = env.resolve("gw-default:cores")

    # the control: every other gateway target runs one worker; ``cores`` passes no --workers at all
    assert started == [("gw-default", 1), ("gw-default", None)]
    assert one is not None and cores is not None and again is not None
    assert one[0] is not cores[0] and again[0] is cores[0]  # its own process, started once
    assert cores[1] == "http://gw-2/v1/chat/completions"


def test_the_aiohttp_client_target_is_the_default_config_on_pool_client_aiohttp() -> None:
    """``gw-default-aiohttp`` differs from ``gw-default`` only by ``pool.client: aiohttp`` (the default is
    raw since issue #21)."""
    from bench.scenarios import GATEWAYS, gateway_config
    from gateway.config import parse_config

    other = parse_config(gateway_config("http://127.0.0.1:9/v1", GATEWAYS["gw-default-aiohttp"]), env={})
    default = parse_config(gateway_config("http://127.0.0.1:9/v1", GATEWAYS["gw-default"]), env={})
    assert other.upstreams["mock"].pool.client == "aiohttp" and default.upstreams["mock"].pool.client == "raw"
    assert other.routes == default.routes and other.cache == default.cache


def test_rep_order_changes_every_targets_predecessor() -> None:
    targets = ["bare", "gw-off", "gw-default", "gw-all"]
    orders = [runner.rep_order(targets, rep) for rep in range(4)]
    assert all(sorted(order) == sorted(targets) for order in orders)  # every target once per repetition

    def predecessors(target: str) -> set[str | None]:
        return {order[order.index(target) - 1] if order.index(target) else None for order in orders}

    assert all(len(predecessors(t)) >= 2 for t in targets)
    rotated = [targets[rep:] + targets[:rep] for rep in range(4)]  # the plain rotation it replaced: control
    assert {o[o.index("gw-default") - 1] for o in rotated if o.index("gw-default")} == {"gw-off"}
