"""gateway/ranges.py: value ranges judged only on routes that opt in; every judgement counted."""
from __future__ import annotations

from typing import Any

import pytest

from gateway.config import ConfigError, parse_config
from gateway.errors import LocalReply
from gateway.ranges import MAX_TOKENS_PARAM, check, out_of_range
from gateway.telemetry.metrics import Metrics

CHAT: dict[str, Any] = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
OUT = [
    ("temperature", 2.01), ("temperature", -0.1), ("top_p", 1.5), ("presence_penalty", -2.5),
    ("frequency_penalty", 9), ("n", 0), ("n", 129), ("top_logprobs", 21), ("max_tokens", 0),
    ("max_completion_tokens", MAX_TOKENS_PARAM + 1), ("max_output_tokens", -1),
]
EDGES = {"temperature": 2, "top_p": 0, "presence_penalty": -2, "frequency_penalty": 2.0, "n": 128,
         "top_logprobs": 0, "max_tokens": MAX_TOKENS_PARAM, "max_completion_tokens": 1}


def decisions(m: Metrics) -> dict[str, float]:
    return {s.labels["decision"]: s.value for f in m.registry.collect() for s in f.samples
            if s.name == "gateway_policy_decisions_total" and s.labels["policy"] == "validation"}


@pytest.mark.parametrize(("name", "value"), OUT)
def test_out_of_range_values_get_the_openai_style_400(name: str, value: float) -> None:
    reply = out_of_range({**CHAT, name: value})
    assert reply is not None and reply.status == 400
    assert (reply.param, reply.code) == (name, "invalid_value")


def test_edges_and_other_types_pass() -> None:
    assert out_of_range({**CHAT, **EDGES}) is None
    # Other types are the type check's (gateway/request_schema.py), not this module's.
    assert out_of_range({**CHAT, "temperature": "3", "n": True, "max_tokens": None}) is None


def test_provider_mode_judges_nothing_and_counts_nothing() -> None:
    m = Metrics()
    check("provider", {**CHAT, "temperature": 3}, m)
    assert decisions(m) == {}


def test_strict_refuses_and_counts() -> None:
    m = Metrics()
    check("strict", CHAT, m)  # positive control: an in-range body passes
    with pytest.raises(LocalReply) as err:
        check("strict", {**CHAT, "temperature": 3}, m)
    assert err.value.param == "temperature"
    assert decisions(m) == {"ok": 1.0, "refused": 1.0}


def test_shadow_counts_what_strict_would_refuse_and_lets_it_pass() -> None:
    m = Metrics()
    check("shadow", CHAT, m)
    check("shadow", {**CHAT, "n": 0}, m)
    assert decisions(m) == {"ok": 1.0, "would_refuse": 1.0}


def test_route_validate_key_in_config() -> None:
    cfg = parse_config({"upstreams": {"a": {"base_url": "http://x"}},
                        "routes": [{"upstream": "a", "validate": "strict"}, {"upstream": "a"}]}, env={})
    assert [r.validate for r in cfg.routes] == ["strict", "provider"]
    with pytest.raises(ConfigError) as err:
        parse_config({"upstreams": {"a": {"base_url": "http://x"}},
                      "routes": [{"upstream": "a", "validate": "sometimes"}]}, env={})
    assert any(p.startswith("routes[0].validate: must be one of") for p in err.value.problems)
