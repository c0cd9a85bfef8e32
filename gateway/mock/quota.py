"""Provider quota emulation: a real 60 s sliding window over requests and tokens.

The gateway's rate limiter and retry logic read OpenAI's `x-ratelimit-*` and
`Retry-After` headers, so the mock emits them with the same format, and it
enforces the window against an injectable clock so tests can move time forward
instead of sleeping.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

WINDOW_S = 60.0
# What the headers advertise when no quota is configured (large, like a high tier).
DEFAULT_RPM = 10_000
DEFAULT_TPM = 10_000_000


@dataclass(frozen=True, slots=True, kw_only=True)
class QuotaLimits:
    """Per-minute limits; None means unlimited."""

    rpm: int | None = None
    tpm: int | None = None

    @property
    def unlimited(self) -> bool:
        return self.rpm is None and self.tpm is None


@dataclass(frozen=True, slots=True, kw_only=True)
class QuotaDecision:
    allowed: bool
    retry_after_s: float = 0.0
    reason: str = ""


class SlidingWindowQuota:
    """Admits requests against rpm/tpm over the last 60 s of the injected clock.

    Rejected requests do not consume capacity, so `Retry-After` is exact: after
    that many seconds the same request will be admitted (absent other traffic).
    """

    def __init__(self, clock: Callable[[], float], default_rpm: int = DEFAULT_RPM,
                 default_tpm: int = DEFAULT_TPM) -> None:
        self._clock = clock
        self.limits = QuotaLimits()
        self.default_rpm, self.default_tpm = default_rpm, default_tpm  # advertised when no quota is set
        self._window: deque[tuple[float, int]] = deque()
        self._tokens_in_window = 0

    def configure(self, limits: QuotaLimits) -> None:
        """New limits start from an empty window so earlier test traffic doesn't leak in."""
        self.limits = limits
        self.reset_window()

    def reset_window(self) -> None:
        self._window.clear()
        self._tokens_in_window = 0

    def admit(self, tokens: int) -> QuotaDecision:
        if self.limits.unlimited:
            return QuotaDecision(allowed=True)
        now = self._clock()
        self._prune(now)
        rpm, tpm = self.limits.rpm, self.limits.tpm
        waits: list[tuple[float, str]] = []
        if rpm is not None and len(self._window) >= rpm:
            waits.append((self._wait_for_requests(now, rpm), "requests"))
        if tpm is not None and self._tokens_in_window + tokens > tpm:
            waits.append((self._wait_for_tokens(now, tpm, tokens), "tokens"))
        if waits:
            wait, reason = max(waits)
            return QuotaDecision(allowed=False, retry_after_s=wait, reason=reason)
        self._window.append((now, tokens))
        self._tokens_in_window += tokens
        return QuotaDecision(allowed=True)

    def _prune(self, now: float) -> None:
        horizon = now - WINDOW_S
        while self._window and self._window[0][0] <= horizon:
            _, tokens = self._window.popleft()
            self._tokens_in_window -= tokens

    def _wait_for_requests(self, now: float, rpm: int) -> float:
        if rpm <= 0:
            return WINDOW_S
        # The (n - rpm)-th oldest entry must expire to leave room for one more.
        t, _ = self._window[len(self._window) - rpm]
        return t + WINDOW_S - now

    def _wait_for_tokens(self, now: float, tpm: int, tokens: int) -> float:
        if tokens > tpm:
            return WINDOW_S  # can never fit; a real provider would say "request too large"
        freed = self._tokens_in_window
        for t, used in self._window:
            freed -= used
            if freed + tokens <= tpm:
                return t + WINDOW_S - now
        return WINDOW_S

    def headers(self) -> dict[str, str]:
        """OpenAI-style `x-ratelimit-*` headers reflecting the current window."""
        if self.limits.unlimited:
            rpm, tpm = self.default_rpm, self.default_tpm
            return {
                "x-ratelimit-limit-requests": str(rpm),
                "x-ratelimit-remaining-requests": str(rpm - 1),
                "x-ratelimit-reset-requests": "6ms",
                "x-ratelimit-limit-tokens": str(tpm),
                "x-ratelimit-remaining-tokens": str(tpm - 1000),
                "x-ratelimit-reset-tokens": "6ms",
            }
        now = self._clock()
        self._prune(now)
        oldest_reset = (self._window[0][0] + WINDOW_S - now) if self._window else 0.0
        rpm = self.limits.rpm if self.limits.rpm is not None else self.default_rpm
        tpm = self.limits.tpm if self.limits.tpm is not None else self.default_tpm
        return {
            "x-ratelimit-limit-requests": str(rpm),
            "x-ratelimit-remaining-requests": str(max(0, rpm - len(self._window))),
            "x-ratelimit-reset-requests": format_duration(oldest_reset),
            "x-ratelimit-limit-tokens": str(tpm),
            "x-ratelimit-remaining-tokens": str(max(0, tpm - self._tokens_in_window)),
            "x-ratelimit-reset-tokens": format_duration(oldest_reset),
        }

    def usage(self) -> dict[str, int | None]:
        now = self._clock()
        self._prune(now)
        return {
            "rpm": self.limits.rpm,
            "tpm": self.limits.tpm,
            "requests_in_window": len(self._window),
            "tokens_in_window": self._tokens_in_window,
        }


def retry_after_headers(wait_s: float) -> dict[str, str]:
    """`Retry-After` in whole seconds (rounded up, >= 1) plus OpenAI's precise `retry-after-ms`."""
    return {
        "Retry-After": str(max(1, math.ceil(wait_s - 1e-9))),
        "retry-after-ms": str(max(1, math.ceil(wait_s * 1000 - 1e-6))),
    }


def format_duration(seconds: float) -> str:
    """Go-style durations as OpenAI sends them: "20ms", "1s", "1.5s", "6m0s"."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{max(1, round(seconds * 1000))}ms"
    if seconds < 60:
        return _trim(f"{seconds:.3f}") + "s"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{_trim(f'{rest:.3f}')}s"


def _trim(number: str) -> str:
    return number.rstrip("0").rstrip(".") if "." in number else number
