"""Breakers and budgets per upstream and tool, kept across reloads and visible to /admin/stats."""
from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from gateway.components import BREAKER_STATES, QUOTA_PAUSED
from gateway.config import parse_config
from gateway.exchange import LayerState
from gateway.telemetry.metrics import Metrics
from policies.resilience.registry import resilience_of
from tests.support.exchange import build_exchange


def config(open_s: float = 30.0):  # type: ignore[no-untyped-def]
    return parse_config({
        "upstreams": {"a": {"base_url": "http://127.0.0.1:9/v1",
                            "circuit_breaker": {"consecutive_failures": 1, "open_s": open_s}},
                      "b": {"base_url": "http://127.0.0.1:9/v1"}},
        "routes": [{"match": {"model": "*"}, "upstream": "a"}],
        "tools": {"quotes": {"base_url": "http://127.0.0.1:9"}},
    }, {})


def state():  # type: ignore[no-untyped-def]
    now = [50.0]
    return SimpleNamespace(components=LayerState(), backend=None, finalizers=[], metrics=Metrics(),
                           clock=lambda: now[0],
                           sinks=[]), now


def test_breakers_for_every_upstream_and_tool(caplog: pytest.LogCaptureFixture) -> None:
    """Each upstream and tool gets a breaker; state changes move the gauge and log one line."""
    st, _ = state()
    res = resilience_of(st, config())
    rows = st.components[BREAKER_STATES]()
    assert {name for name, _, _ in rows} == set(res.breakers)
    assert set(res.breakers) == {"a", "b", "tool:quotes"} and set(res.budgets) == set(res.breakers)
    breaker = res.breakers["a"]
    assert (breaker.state, breaker.since) == ("closed", 50.0)
    with caplog.at_level(logging.WARNING, logger="gateway"):
        breaker.admit().settle("failure")
    lines = [r for r in caplog.records if getattr(r, "fields", {}).get("event") == "state_change"]
    assert len(lines) == 1 and lines[0].fields["upstream"] == "a" and lines[0].fields["to"] == "open"
    sample = st.metrics.registry.get_sample_value
    assert sample("gateway_circuit_state", {"upstream": "a"}) == 2
    assert sample("gateway_circuit_state", {"upstream": "b"}) == 0
    assert sample("gateway_circuit_transitions_total", {"upstream": "a", "to": "open"}) == 1
    assert sample("gateway_policy_decisions_total", {"policy": "circuit_breaker", "decision": "allow"}) == 1


def test_reload_keeps_state_and_updates_config() -> None:
    """A reload reuses the same breaker objects (an open breaker stays open) with the new config."""
    st, _ = state()
    res = resilience_of(st, config())
    breaker = res.breakers["a"]
    breaker.admit().settle("failure")
    again = resilience_of(st, config(open_s=5.0))
    assert again is res and again.breakers["a"] is breaker
    assert breaker.state == "open" and breaker.config.open_s == 5.0


def test_unknown_key_gets_defaults() -> None:
    """An upstream missing from config (should not happen) still gets a working breaker and budget."""
    st, _ = state()
    res = resilience_of(st, config())
    assert res.breaker("ghost").state == "closed" and res.budget("ghost").requests == 0


def test_mid_stream_timeouts_counted_at_finish() -> None:
    """Timeouts that cut an answer already sent are counted once, from the finished exchange."""
    st, _ = state()
    res = resilience_of(st, config())
    assert st.sinks == [res.on_finished]
    cut = build_exchange(error_kind="idle_timeout", stream_outcome="error_event", operation="chat",
                         upstream="a")
    before = build_exchange(error_kind="timeout_before_first_byte", stream_outcome="", operation="chat",
                            upstream="a")  # counted by the retry policy, not here
    tool = build_exchange(error_kind="total_timeout", stream_outcome="cut", operation="tool",
                          upstream="quotes")
    for ex in (cut, before, tool):
        res.on_finished(ex)
    sample = st.metrics.registry.get_sample_value
    assert sample("gateway_timeouts_total", {"upstream": "a", "phase": "idle"}) == 1
    assert sample("gateway_timeouts_total", {"upstream": "a", "phase": "first_byte"}) is None
    assert sample("gateway_timeouts_total", {"upstream": "tool:quotes", "phase": "total"}) == 1


def test_a_deployment_with_a_paused_quota_is_not_admitted_first() -> None:
    """``admits`` (the balancer's first choice) refuses an open breaker or a quota the rate-limit feature
    reports paused (counted); without that feature, or unpaused, it admits."""
    st, _ = state()
    res = resilience_of(st, config())
    assert res.admits("a") and res.admits("b")  # no rate-limit component: nothing is paused
    pauses = {"b": 12.0}
    st.components.set(QUOTA_PAUSED, lambda upstream: pauses.get(upstream, 0.0))
    assert res.admits("a") and not res.admits("b")
    sample = st.metrics.registry.get_sample_value
    skipped = {"policy": "balance", "decision": "skip_paused_quota"}
    assert sample("gateway_policy_decisions_total", skipped) == 1
    pauses["b"] = 0.0
    assert res.admits("b")
