"""Exponential backoff: capped, and jittered the way the config says."""
from __future__ import annotations

from policies.resilience.backoff import backoff_delay
from policies.resilience.config import RetryConfig


def test_full_jitter_spans_zero_to_cap() -> None:
    """Full jitter draws uniformly in [0, min(max, base * 2^(n-1))]."""
    cfg = RetryConfig(base_delay_s=0.5, max_delay_s=8.0, jitter="full")
    assert backoff_delay(1, cfg, lambda: 1.0) == 0.5
    assert backoff_delay(3, cfg, lambda: 1.0) == 2.0
    assert backoff_delay(3, cfg, lambda: 0.0) == 0.0
    assert backoff_delay(3, cfg, lambda: 0.25) == 0.5


def test_cap_and_huge_retry_numbers() -> None:
    """The delay never exceeds max_delay_s, even for absurd retry numbers."""
    cfg = RetryConfig(base_delay_s=0.5, max_delay_s=8.0, jitter="none")
    assert backoff_delay(5, cfg, lambda: 0.5) == 8.0
    assert backoff_delay(10_000, cfg, lambda: 0.5) == 8.0


def test_equal_jitter_keeps_half() -> None:
    """Equal jitter waits at least half the capped delay."""
    cfg = RetryConfig(base_delay_s=1.0, max_delay_s=8.0, jitter="equal")
    assert backoff_delay(2, cfg, lambda: 0.0) == 1.0
    assert backoff_delay(2, cfg, lambda: 1.0) == 2.0
