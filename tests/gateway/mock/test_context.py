"""The mock's per-request context: each answer's TTFT, exact or drawn around the configured median."""
from __future__ import annotations

import random
import statistics
from typing import Any

from gateway.mock import MockConfig
from gateway.mock.context import RequestContext
from gateway.mock.faults import NO_FAULT, parse_fault_spec
from gateway.mock.recorder import Recorder


def context(cfg: MockConfig, rng: random.Random | None, fault: Any = NO_FAULT) -> RequestContext:
    return RequestContext(request=None, cfg=cfg, recorder=Recorder(), attempt=None,  # type: ignore[arg-type]
                          fault=fault, body={}, header_tokens=None, tool_calls_header=None, no_usage=False,
                          rng=rng)


def test_without_a_spread_every_answer_has_the_configured_ttft() -> None:
    cfg = MockConfig(ttft_ms=20)
    assert {context(cfg, random.Random(1)).ttft_s for _ in range(50)} == {0.02}


def test_a_spread_draws_once_per_answer_around_the_median_reproducibly() -> None:
    cfg = MockConfig(ttft_ms=20, ttft_sigma=0.3, seed=7)
    rng = random.Random(cfg.seed)
    draws = []
    for _ in range(2000):
        ctx = context(cfg, rng)
        first = ctx.ttft_s
        assert ctx.ttft_s == first  # one answer, one TTFT
        draws.append(first)
    ordered = sorted(draws)
    assert 0.019 < statistics.median(draws) < 0.021
    assert 1.7 < ordered[1980] / statistics.median(draws) < 2.3  # p99 about e^(2.33 x 0.3) = 2.0x
    again = random.Random(cfg.seed)
    assert [context(cfg, again).ttft_s for _ in range(5)] == draws[:5]  # the seed replays the run


def test_a_scripted_ttft_stays_exact_under_a_spread() -> None:
    cfg = MockConfig(ttft_ms=20, ttft_sigma=0.5)
    fault = parse_fault_spec("ttft_ms=200")
    assert {context(cfg, random.Random(3), fault).ttft_s for _ in range(20)} == {0.2}

