"""Provider wait hints: retry-after-ms, Retry-After (seconds or date), x-ratelimit-reset-* on 429."""
from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from gateway.retry_after import parse_duration, retry_after_s


def test_precedence_ms_then_seconds() -> None:
    """retry-after-ms is the most precise and wins over Retry-After."""
    assert retry_after_s({"retry-after-ms": "1500", "retry-after": "9"}, 429) == 1.5
    assert retry_after_s({"retry-after": "2"}, 503) == 2.0
    assert retry_after_s({"retry-after": "0.5"}, 429) == 0.5


def test_http_date() -> None:
    """An HTTP-date Retry-After is turned into seconds from the (injected) wall clock."""
    now = 1_700_000_000.0
    date = format_datetime(datetime.fromtimestamp(now + 30, tz=UTC), usegmt=True)
    assert retry_after_s({"retry-after": date}, 503, wall=lambda: now) == pytest.approx(30, abs=1)


def test_ratelimit_reset_only_on_429() -> None:
    """x-ratelimit-reset-* is a wait hint on a 429 only; the exhausted limit decides."""
    headers = {"x-ratelimit-reset-requests": "1s", "x-ratelimit-remaining-requests": "0",
               "x-ratelimit-reset-tokens": "6m0s", "x-ratelimit-remaining-tokens": "5000"}
    assert retry_after_s(headers, 429) == 1.0
    assert retry_after_s(headers, 503) is None
    both = {**headers, "x-ratelimit-remaining-tokens": "0"}
    assert retry_after_s(both, 429) == 360.0
    neither = {**headers, "x-ratelimit-remaining-requests": "3"}
    assert retry_after_s(neither, 429) == 1.0


@pytest.mark.parametrize("bad", ["soon", "-3", "nan", "inf", "", "1x"])
def test_garbage_is_ignored(bad: str) -> None:
    """An unparsable hint is no hint: never a surprise sleep."""
    assert retry_after_s({"retry-after": bad, "retry-after-ms": bad}, 503) is None


def test_go_durations() -> None:
    """OpenAI's Go-style durations parse; malformed ones do not."""
    assert parse_duration("20ms") == pytest.approx(0.02)
    assert parse_duration("1h2m3.5s") == pytest.approx(3723.5)
    assert parse_duration("6m0s") == 360.0
    assert parse_duration("7") == 7.0
    assert parse_duration("1s garbage") is None
    assert parse_duration("s") is None
