"""The ``retry`` checks: accepted ``retry_on`` values are values the gateway acts on."""
from __future__ import annotations

import pytest

from gateway.config import ConfigError, parse_config


def _problems(retry_on: list[str]) -> list[str]:
    raw = {"upstreams": {"a": {"base_url": "http://a/v1", "retry": {"retry_on": retry_on}}},
           "routes": [{"upstream": "a", "retry": {"retry_on": retry_on}}]}
    with pytest.raises(ConfigError) as err:
        parse_config(raw, env={})
    return err.value.problems


@pytest.mark.parametrize("status", ["400", "401", "404", "413", "422"])
def test_client_error_statuses_in_retry_on_are_errors(status: str) -> None:
    """``retry_on: [400]`` would be silently ignored, so check-config refuses it, for upstreams and routes."""
    problems = _problems([status, "503"])
    assert any(p.startswith(f"upstreams.a.retry.retry_on: {status} is a client error") for p in problems)
    assert any(p.startswith(f"routes[0].retry.retry_on: {status} is a client error") for p in problems)


def test_retryable_values_are_accepted() -> None:
    """Positive control: 408, 429, 5xx and the failure kinds load."""
    cfg = parse_config({"upstreams": {"a": {"base_url": "http://a/v1", "retry": {"retry_on": [
        "408", "429", "500", "599", "timeout_before_first_byte", "error_event"]}}},
        "routes": [{"upstream": "a"}]}, env={})
    assert cfg.upstreams["a"].retry.retry_on[0] == "408"


def test_breaker_intervals_are_checked() -> None:
    """A zero open interval or no probes is a check-config error; an open_s above the default cap is not."""
    raw = {"upstreams": {"a": {"base_url": "http://a/v1", "circuit_breaker": {
        "open_s": 0, "half_open_probes": 0}}}, "routes": [{"upstream": "a"}]}
    with pytest.raises(ConfigError) as err:
        parse_config(raw, env={})
    assert err.value.problems == ["upstreams.a.circuit_breaker.open_s: must be > 0",
                                  "upstreams.a.circuit_breaker.half_open_probes: must be >= 1"]
    ok = parse_config({"upstreams": {"a": {"base_url": "http://a/v1", "circuit_breaker": {"open_s": 30}}},
                       "routes": [{"upstream": "a"}]}, env={})
    assert ok.upstreams["a"].circuit_breaker.open_s == 30



def test_hedge_block_is_checked() -> None:
    """A hedge needs a delay or a percentile, and a fallback to hedge to."""
    raw = {"upstreams": {"a": {"base_url": "http://a/v1"}},
           "routes": [{"upstream": "a", "hedge": {"after": "p100"}},
                      {"upstream": "a", "hedge": {"after_s": 0}, "fallbacks": [{"upstream": "a"}]}]}
    with pytest.raises(ConfigError) as err:
        parse_config(raw, env={})
    assert err.value.problems == [
        "routes[0].hedge.after: must be a percentile p50..p99, got 'p100'",
        "routes[0].hedge: the route has no fallbacks or other targets to hedge to",
        "routes[1].hedge.after_s: must be > 0",
    ]
    ok = {**raw, "routes": [{"upstream": "a", "hedge": {"after": "p95", "after_s": 2},
                             "fallbacks": [{"upstream": "a"}]}]}
    assert parse_config(ok, env={}).routes[0].hedge is not None


def test_hedge_max_extra_is_checked() -> None:
    """``max_extra`` is a share in (0, 0.5] and chooses the percentile itself, so not with ``after``."""
    fb = [{"upstream": "a"}]
    raw = {"upstreams": {"a": {"base_url": "http://a/v1"}},
           "routes": [{"upstream": "a", "hedge": {"max_extra": 0}, "fallbacks": fb},
                      {"upstream": "a", "hedge": {"max_extra": 0.9}, "fallbacks": fb},
                      {"upstream": "a", "hedge": {"max_extra": 0.08, "after": "p95"}, "fallbacks": fb}]}
    with pytest.raises(ConfigError) as err:
        parse_config(raw, env={})
    assert err.value.problems == [
        "routes[0].hedge.max_extra: must be a share of requests in (0, 0.5], got 0.0",
        "routes[1].hedge.max_extra: must be a share of requests in (0, 0.5], got 0.9",
        "routes[2].hedge: after and max_extra both choose the percentile: keep one",
    ]
    ok = {**raw, "routes": [{"upstream": "a", "hedge": {"max_extra": 0.08}, "fallbacks": fb}]}
    hedge = parse_config(ok, env={}).routes[0].hedge
    assert hedge is not None and hedge.max_extra == 0.08


def test_hedge_can_be_turned_off_and_may_go_to_another_deployment() -> None:
    """``enabled: false`` needs nothing else; a second deployment is somewhere to hedge to."""
    ups = {"a": {"base_url": "http://a/v1"}, "b": {"base_url": "http://b/v1"}}
    raw = {"upstreams": ups, "routes": [
        {"upstream": "a", "hedge": {"enabled": False}},
        {"upstream": "a", "hedge": {"after_s": 1}, "targets": [{"upstream": "b"}]},
        {"upstream": "a", "hedge": {"after_s": 1}, "targets": [{"upstream": "a"}, {"upstream": "b"}]}]}
    cfg = parse_config(raw, env={})
    assert [r.hedge.enabled for r in cfg.routes if r.hedge] == [False, True, True]
    # positive control: the same hedge on a single-deployment route without fallbacks is refused
    lone = {"upstreams": ups, "routes": [{"upstream": "a", "hedge": {"after_s": 1},
                                          "targets": [{"upstream": "a"}]}, {"upstream": "a", "hedge": {}}]}
    with pytest.raises(ConfigError) as err:
        parse_config(lone, env={})
    assert err.value.problems == [
        "routes[0].hedge: the route has no fallbacks or other targets to hedge to",
        "routes[1].hedge: needs after_s (seconds), after (p50..p99) or max_extra, or enabled: false",
        "routes[1].hedge: the route has no fallbacks or other targets to hedge to",
    ]


def test_continue_on_break_needs_a_fallback_that_can_continue() -> None:
    ups = {"a": {"base_url": "http://a/v1"}, "b": {"base_url": "http://b/v1"}}
    raw = {"upstreams": ups, "routes": [{"upstream": "a", "continue_on_break": True,
                                         "fallbacks": [{"upstream": "b"}]}]}
    with pytest.raises(ConfigError) as err:
        parse_config(raw, env={})
    assert err.value.problems[0].startswith("routes[0].continue_on_break: no fallback")
    ok = {**raw, "upstreams": {**ups, "b": {"base_url": "http://b/v1", "continuation": "prefill"}}}
    assert parse_config(ok, env={}).upstreams["b"].continuation == "prefill"


def test_deployment_targets_are_checked() -> None:
    raw = {"upstreams": {"a": {"base_url": "http://a/v1"}},
           "routes": [{"upstream": "a", "targets": [{"upstream": "a", "weight": 0}, {"upstream": "zz"}]}]}
    with pytest.raises(ConfigError) as err:
        parse_config(raw, env={})
    assert err.value.problems == ["routes[0].targets[0].weight: must be > 0",
                                  "routes[0].targets[1].upstream: unknown upstream 'zz'"]
