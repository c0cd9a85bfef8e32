"""The ``retry`` and ``circuit_breaker`` blocks."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

DEFAULT_RETRY_ON = (
    "connect_error",
    "reset_before_response",
    "timeout_before_first_byte",
    "429",
    "500",
    "502",
    "503",
    "504",
)

@dataclass(frozen=True, slots=True, kw_only=True)
class RetryConfig:
    max_attempts: int = 3
    base_delay_s: float = 0.5
    max_delay_s: float = 8.0
    jitter: Literal["full", "equal", "none"] = "full"
    retry_on: list[str] = field(default_factory=lambda: list(DEFAULT_RETRY_ON))
    respect_retry_after: bool = True
    max_retry_after_s: float = 60.0
    budget_ratio: float = 0.2
    budget_floor: int = 10  # retries always allowed per window, however few the requests

@dataclass(frozen=True, slots=True, kw_only=True)
class CircuitBreakerConfig:
    consecutive_failures: int = 5
    failure_ratio: float = 0.5
    min_calls: int = 20
    window_s: float = 30.0
    # Short and bounded (issue 18): a recovered upstream gets traffic back within max_open_s plus one
    # request gap; a still-dead one costs one probe per interval (it then fails over as usual).
    open_s: float = 4.0
    max_open_s: float = 6.0
    half_open_probes: int = 3
    enforce: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class HedgeConfig:
    """Per route: start the same request on the next target when the first token is late (issue 18).

    ``after_s`` is a fixed delay; ``after: p95`` (p50..p99) is adaptive, from the route's recent
    time to first token on its primary; with both, ``after_s`` applies until ``min_samples`` were seen.
    ``max_extra: 0.08`` states the cost instead (Finagle's backup requests): the trigger is the primary's
    recent TTFT quantile at ``1 - max_extra``, over a window that also holds the primaries that lost a
    race (at the time they were cancelled, a lower bound), so about that share of requests is hedged.
    A route with a second target and no ``hedge`` block hedges its streams after ``DEFAULT_HEDGE_AFTER_S``;
    ``enabled: false`` turns hedging off for the route.
    """

    enabled: bool = True
    after_s: float | None = None
    after: str | None = None
    max_extra: float | None = None  # the share of requests hedged (0.08: at most ~8% extra upstream calls)
    min_samples: int = 20
    window: int = 500  # recent first-token times kept per route and target


# Issue 18: with defaults and one fallback, a silent primary must be answered within 15 s and a first token
# after 20 s within 40 s; the default first-byte timeout (60 s) is far too late for either.
DEFAULT_HEDGE_AFTER_S = 10.0
DEFAULT_HEDGE = HedgeConfig(after_s=DEFAULT_HEDGE_AFTER_S)
