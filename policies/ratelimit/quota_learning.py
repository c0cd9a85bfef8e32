"""Learn a provider's real quota from its answers, so the next requests queue instead of collecting 429s.

Every answer of an OpenAI-style provider says how much is left
(``x-ratelimit-remaining-requests/tokens``) and when it is whole again
(``x-ratelimit-reset-*``); a 429 says how long to stay away (``Retry-After``).
The local (or shared) bucket is shrunk to the provider's view, and the upstream
is paused until the reset when the provider says it is exhausted or answers 429.

The provider's figure already counts this request, and most likely every
request sent before it; requests admitted *after* it may still be on the way,
so they are subtracted (``Pending``). Shrinking may leave a bucket in debt,
which is the point: the provider is fuller than we thought.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from gateway.retry_after import parse_duration, retry_after_s

DEFAULT_429_PAUSE_S = 1.0  # a 429 that says nothing about when to come back
MAX_PAUSE_S = 300.0  # a provider cannot park an upstream longer than this from one answer
MAX_RESET_PAUSE_S = 60.0  # "exhausted until reset": one quota window at most


@dataclass(slots=True)
class Pending:
    """Admissions to one upstream whose response headers have not arrived yet, by admission order."""

    seq: int = 0
    open: dict[int, int] = field(default_factory=dict)  # seq -> tokens reserved
    tokens: int = 0

    def add(self, tokens: int) -> int:
        self.seq += 1
        self.open[self.seq] = tokens
        self.tokens += tokens
        return self.seq

    def done(self, seq: int) -> None:
        tokens = self.open.pop(seq, None)
        if tokens is not None:
            self.tokens -= tokens

    def after(self, seq: int) -> tuple[int, int]:
        """Requests and tokens admitted after ``seq`` and still waiting for headers."""
        requests = tokens = 0
        for other in reversed(self.open):
            if other <= seq:
                break
            requests += 1
            tokens += self.open[other]
        return requests, tokens


@dataclass(frozen=True, slots=True)
class Lesson:
    requests: float | None  # level the requests bucket should not exceed
    tokens: float | None  # level the tokens bucket should not exceed
    pause_s: float  # pause the upstream this long (0: no pause)


def _number(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        return None


def lesson(status: int, headers: Mapping[str, str], uncounted: tuple[int, int]) -> Lesson | None:
    """What one answer teaches about the provider's quota; None when it says nothing."""
    remaining_requests = _number(headers.get("x-ratelimit-remaining-requests"))
    remaining_tokens = _number(headers.get("x-ratelimit-remaining-tokens"))
    pause = 0.0
    if status == 429:
        pause = retry_after_s(headers, status) or DEFAULT_429_PAUSE_S
    else:
        if remaining_requests is not None and remaining_requests <= 0:
            pause = parse_duration(headers.get("x-ratelimit-reset-requests", "")) or 0.0
        if remaining_tokens is not None and remaining_tokens <= 0:
            pause = max(pause, parse_duration(headers.get("x-ratelimit-reset-tokens", "")) or 0.0)
        pause = min(MAX_RESET_PAUSE_S, pause)
    if remaining_requests is None and remaining_tokens is None and pause == 0.0:
        return None
    return Lesson(
        requests=None if remaining_requests is None else remaining_requests - uncounted[0],
        tokens=None if remaining_tokens is None else remaining_tokens - uncounted[1],
        pause_s=min(pause, MAX_PAUSE_S),
    )

