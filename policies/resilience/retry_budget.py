"""Retry budget per upstream: retries may be at most ``budget_ratio`` of recent requests.

Per-request attempt limits do not stop a storm: when an upstream fails every
request, ``max_attempts: 3`` triples the load on it exactly when it is least able
to take it (and clients retrying on top multiply it again, LiteLLM #7130). A
budget over a sliding window caps the extra load at ``budget_ratio`` (Finagle's
RetryBudget, gRPC's retry throttling), while ``budget_floor`` keeps a few retries
available to low-traffic upstreams where a ratio of almost nothing is nothing.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable

from policies.resilience.config import RetryConfig

WINDOW_S = 10.0
_BUCKETS = 10


class RetryBudget:
    """Counts first attempts and retries in ``WINDOW_S`` of the injected clock, in buckets."""

    __slots__ = ("_buckets", "_clock", "_requests", "_retries", "_width", "floor", "ratio")

    def __init__(self, cfg: RetryConfig, clock: Callable[[], float], window_s: float = WINDOW_S) -> None:
        self.ratio = cfg.budget_ratio
        self.floor = cfg.budget_floor
        self._clock = clock
        self._width = window_s / _BUCKETS
        self._buckets: deque[list[int]] = deque()  # [bucket id, requests, retries], oldest first
        self._requests = 0
        self._retries = 0

    def configure(self, cfg: RetryConfig) -> None:
        self.ratio, self.floor = cfg.budget_ratio, cfg.budget_floor

    def record_request(self) -> None:
        """A first attempt on this upstream (fallbacks count as requests of their upstream)."""
        self._bucket()[1] += 1
        self._requests += 1

    def try_spend(self) -> bool:
        """Take one retry from the budget; False when the window's retries are used up."""
        bucket = self._bucket()
        if self._retries + 1 > max(float(self.floor), self.ratio * self._requests):
            return False
        bucket[2] += 1
        self._retries += 1
        return True

    @property
    def requests(self) -> int:
        self._bucket()
        return self._requests

    @property
    def retries(self) -> int:
        self._bucket()
        return self._retries

    def _bucket(self) -> list[int]:
        current = int(self._clock() // self._width)
        buckets = self._buckets
        while buckets and buckets[0][0] <= current - _BUCKETS:
            _, requests, retries = buckets.popleft()
            self._requests -= requests
            self._retries -= retries
        if not buckets or buckets[-1][0] != current:
            buckets.append([current, 0, 0])
        return buckets[-1]
