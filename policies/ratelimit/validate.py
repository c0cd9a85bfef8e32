"""Start-up checks of the ``rate_limit`` blocks and of the per-key limits: ``dotted.path: what is wrong``."""
from __future__ import annotations

from gateway.config_model import Config
from policies.ratelimit.model import check_key_limits, check_rate_limit


def problems(cfg: Config) -> list[str]:
    found: list[str] = []
    for name, up in cfg.upstreams.items():
        if up.rate_limit is not None:
            found += check_rate_limit(f"upstreams.{name}.rate_limit", up.rate_limit)
    return found + check_key_limits("auth.keys", cfg.auth.keys)
