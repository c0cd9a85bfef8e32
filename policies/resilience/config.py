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
