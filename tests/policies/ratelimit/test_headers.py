"""The headers clients get: OpenAI's x-ratelimit-* spelling and a Retry-After they can act on."""
from __future__ import annotations

from policies.ratelimit.headers import client_headers, format_duration, reset_s, retry_after_value
from policies.ratelimit.model import NEVER, Limit, LimitSet, Verdict

LS = LimitSet(
    "client",
    "c:t:x",
    "t",
    (
        Limit("rpm", "bucket", 60.0, 1.0),
        Limit("tpm", "bucket", 6000.0, 100.0, True),
        Limit("daily_tokens", "day", 1e6, tokens=True),
    ),
)


def test_format_duration_like_openai() -> None:
    """Durations read like OpenAI's: ms below a second, trimmed seconds, minutes and hours."""
    assert [format_duration(s) for s in (0, 0.0201, 1.0, 1.5, 59.9994, 61, 3725)] == \
        ["0s", "21ms", "1s", "1.5s", "59.999s", "1m1s", "1h2m5s"]


def test_retry_after_is_whole_seconds() -> None:
    """Retry-After rounds up to whole seconds, at least 1; a never-fitting request says 60."""
    assert [retry_after_value(s) for s in (0.01, 1.0, 1.2, NEVER)] == ["1", "1", "2", "60"]


def test_client_headers_from_rpm_and_tpm() -> None:
    """requests come from rpm, tokens from tpm (not the day budget), with their refill times."""
    headers = client_headers(LS, Verdict(True, levels=(58.0, 5000.0, 1e6 - 100)))
    assert headers == {
        "x-ratelimit-limit-requests": "60", "x-ratelimit-remaining-requests": "58",
        "x-ratelimit-reset-requests": "2s", "x-ratelimit-limit-tokens": "6000",
        "x-ratelimit-remaining-tokens": "5000", "x-ratelimit-reset-tokens": "10s",
    }


def test_day_budget_headers_and_reset() -> None:
    """Without tpm the tokens headers describe the day budget, resetting at UTC midnight."""
    ls = LimitSet("client", "c:t:y", "t", (Limit("daily_tokens", "day", 1000.0, tokens=True),))
    headers = client_headers(ls, Verdict(False, "daily_tokens", 10.0, levels=(-5.0,)))
    assert headers["x-ratelimit-remaining-tokens"] == "0" and headers["x-ratelimit-limit-tokens"] == "1000"
    assert "x-ratelimit-limit-requests" not in headers
    assert reset_s(ls, Verdict(True, levels=(10.0,)), 0, wall=86400.0 * 3 - 30) == 30.0
