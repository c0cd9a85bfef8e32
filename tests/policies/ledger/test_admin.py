"""Time parameters of /admin/usage (the endpoint itself is exercised in tests/e2e/test_observability*.py)."""
from __future__ import annotations

import pytest

from gateway.errors import LocalReply
from policies.ledger.admin import parse_time


@pytest.mark.parametrize(("text", "expected"), [
    ("1700000000", 1700000000.0), ("1700000000.5", 1700000000.5), ("90s", 910.0), ("15m", 100.0),
    ("2h", 1000.0 - 7200), ("1d", 1000.0 - 86400), ("2024-01-01T00:00:00Z", 1704067200.0),
    ("2024-01-01T01:00:00+01:00", 1704067200.0), ("2024-01-01", 1704067200.0),
])
def test_parse_time(text: str, expected: float) -> None:
    """Epoch seconds, durations back from now, ISO 8601 (no zone is UTC)."""
    assert parse_time(text, 1000.0, "since") == expected


def test_bad_time_is_a_400() -> None:
    """Anything else is an OpenAI-style 400 naming the parameter."""
    with pytest.raises(LocalReply) as err:
        parse_time("last tuesday", 0.0, "until")
    assert err.value.status == 400 and err.value.param == "until"
