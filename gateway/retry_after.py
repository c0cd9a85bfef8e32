"""How long a provider asks us to wait: ``retry-after-ms``, ``Retry-After``, ``x-ratelimit-reset-*``.

Precedence follows precision: OpenAI's ``retry-after-ms`` first, then the standard
``Retry-After`` (seconds or an HTTP date), then, on a 429 only, OpenAI's
``x-ratelimit-reset-requests`` / ``-tokens`` Go-style durations (``"1s"``, ``"6m0s"``,
``"20ms"``). Headers arrive lower-cased (``gateway.forward_headers.forward_response_headers``).
Anything unparsable is ignored: a bad header must never turn into a long sleep.
"""
from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Mapping
from email.utils import parsedate_to_datetime

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|h|m|s)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_MAX_HEADER_S = 86400.0 * 7  # anything longer is nonsense; treated as "too long" by the caller anyway


def retry_after_s(headers: Mapping[str, str], status: int,
                  wall: Callable[[], float] = time.time) -> float | None:
    """The wait the upstream asked for, in seconds, or None when it said nothing usable."""
    ms = _number(headers.get("retry-after-ms"))
    if ms is not None:
        return min(ms / 1000.0, _MAX_HEADER_S)
    value = headers.get("retry-after")
    if value:
        seconds = _number(value)
        if seconds is None:
            seconds = _http_date_in(value, wall)
        if seconds is not None:
            return min(seconds, _MAX_HEADER_S)
    if status == 429:
        return _ratelimit_reset(headers)
    return None


def parse_duration(text: str) -> float | None:
    """Go-style duration (``"1h2m3.5s"``, ``"20ms"``) or plain seconds; None when unparsable."""
    text = text.strip()
    plain = _number(text)
    if plain is not None:
        return plain
    total, pos = 0.0, 0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            return None
        total += float(match.group(1)) * _UNIT_S[match.group(2)]
        pos = match.end()
    return total if pos == len(text) and pos > 0 else None


def _ratelimit_reset(headers: Mapping[str, str]) -> float | None:
    """The reset of the exhausted limit(s); when none is reported exhausted, the sooner reset."""
    exhausted: list[float] = []
    others: list[float] = []
    for kind in ("requests", "tokens"):
        raw = headers.get(f"x-ratelimit-reset-{kind}")
        reset = parse_duration(raw) if raw else None
        if reset is None:
            continue
        remaining = _number(headers.get(f"x-ratelimit-remaining-{kind}"))
        (exhausted if remaining is None or remaining <= 0 else others).append(reset)
    if exhausted:
        return min(max(exhausted), _MAX_HEADER_S)
    return min(min(others), _MAX_HEADER_S) if others else None


def _number(value: str | None) -> float | None:
    if not value:
        return None
    try:
        number = float(value.strip())
    except ValueError:
        return None
    return number if number >= 0 and math.isfinite(number) else None


def _http_date_in(value: str, wall: Callable[[], float]) -> float | None:
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - wall())
