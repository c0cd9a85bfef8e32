"""Reading the provider's quota headers: what to shrink to, when to pause, what is still in flight."""
from __future__ import annotations

import pytest

from policies.ratelimit.quota_learning import DEFAULT_429_PAUSE_S, MAX_RESET_PAUSE_S, Pending, lesson


def test_remaining_minus_later_admissions() -> None:
    """The bucket is shrunk to the provider's remaining minus what was sent after this request."""
    learned = lesson(200, {"x-ratelimit-remaining-requests": "10", "x-ratelimit-remaining-tokens": "5000",
                           "x-ratelimit-reset-requests": "6s"}, (3, 1200))
    assert learned is not None
    assert learned.requests == 7 and learned.tokens == 3800 and learned.pause_s == 0.0


def test_exhausted_pauses_until_reset_capped() -> None:
    """Remaining 0 pauses until that dimension's reset, at most one quota window."""
    learned = lesson(200, {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1.5s",
                           "x-ratelimit-remaining-tokens": "900", "x-ratelimit-reset-tokens": "50s"}, (0, 0))
    assert learned is not None and learned.pause_s == pytest.approx(1.5)
    long = lesson(200, {"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "6m0s"}, (0, 0))
    assert long is not None and long.pause_s == MAX_RESET_PAUSE_S


def test_429_pauses_for_retry_after() -> None:
    """A 429 pauses for Retry-After (ms precision first), or a default when it says nothing."""
    assert lesson(429, {"retry-after": "2"}, (0, 0)).pause_s == 2.0  # type: ignore[union-attr]
    assert lesson(429, {"retry-after": "2", "retry-after-ms": "1250"}, (0, 0)).pause_s == 1.25  # type: ignore[union-attr]
    assert lesson(429, {}, (0, 0)).pause_s == DEFAULT_429_PAUSE_S  # type: ignore[union-attr]


def test_silent_answers_teach_nothing() -> None:
    """Without rate-limit headers (and not a 429) there is nothing to learn; garbage is ignored."""
    assert lesson(200, {}, (5, 5)) is None
    assert lesson(200, {"x-ratelimit-remaining-requests": "lots"}, (0, 0)) is None


def test_pending_book_counts_later_admissions() -> None:
    """Pending tracks admissions awaiting headers, and which of them came after a given one."""
    book = Pending()
    a, b, c = book.add(100), book.add(200), book.add(300)
    assert book.after(a) == (2, 500) and book.after(c) == (0, 0)
    book.done(b)
    assert book.after(a) == (1, 300) and book.tokens == 400
    book.done(b)  # twice is harmless
    book.done(a)
    book.done(c)
    assert book.tokens == 0 and not book.open
