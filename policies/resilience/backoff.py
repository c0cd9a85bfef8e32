"""Exponential backoff with jitter (AWS architecture blog, "Exponential Backoff And Jitter").

Full jitter spreads retries of many clients that failed at the same moment
uniformly over ``[0, cap]``, which is what stops a 503 burst from turning into
synchronised retry waves. The random source is injected so tests are exact.
"""
from __future__ import annotations

from collections.abc import Callable

from policies.resilience.config import RetryConfig

_MAX_EXPONENT = 30  # 2**30 * any sane base already exceeds every max_delay_s


def backoff_delay(retry: int, cfg: RetryConfig, rand: Callable[[], float]) -> float:
    """Seconds to wait before retry number ``retry`` (1 = the first retry)."""
    exponent = min(max(retry - 1, 0), _MAX_EXPONENT)
    cap = min(cfg.max_delay_s, cfg.base_delay_s * (2.0 ** exponent))
    if cap <= 0:
        return 0.0
    if cfg.jitter == "full":
        return rand() * cap
    if cfg.jitter == "equal":
        return cap / 2 + rand() * cap / 2
    return cap
