"""The limiter component: what it exposes to other features through ``state.components``."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from gateway.components import QUOTA_PAUSED
from gateway.config import parse_config
from gateway.exchange import LayerState
from gateway.telemetry.metrics import Metrics
from policies.ratelimit.model import upstream_limits
from policies.ratelimit.runtime import limiter_for


def test_quota_pause_is_published_for_routing() -> None:
    """A provider 429 with Retry-After pauses the upstream; ``QUOTA_PAUSED`` tells how long, per upstream."""
    now = [100.0]
    cfg = parse_config({"upstreams": {"a": {"base_url": "http://127.0.0.1:9/v1", "rate_limit": {"rpm": 60}}},
                        "routes": [{"upstream": "a"}]}, {})
    st = SimpleNamespace(components=LayerState(), config=cfg, clock=lambda: now[0], metrics=Metrics(),
                         backend=None, closers=[], workers=1)
    limiter = limiter_for(st)  # type: ignore[arg-type]
    paused = st.components[QUOTA_PAUSED]
    ls = upstream_limits("a", cfg.upstreams["a"].rate_limit, 60.0)  # type: ignore[arg-type]
    assert ls is not None and paused("a") == 0.0
    grant = limiter.grant(ls, limiter.memory.acquire_now(ls, ls.amounts(0), "m"), ls.amounts(0), "m", 0, 0,
                          False)
    limiter.observe(grant, 429, {"retry-after": "30"})
    assert paused("a") == pytest.approx(30.0) and paused("b") == 0.0
    now[0] += 31
    assert paused("a") == 0.0
