"""Rate-limit headers we send clients, spelled as OpenAI spells them.

``x-ratelimit-limit/remaining/reset-requests`` and ``-tokens``, with resets as
Go-style durations (``20ms``, ``1.5s``, ``6m0s``), and ``Retry-After`` in whole
seconds: clients' SDK back-off logic works unchanged against the gateway.
(Reading the provider's headers is ``gateway.retry_after``.)
"""
from __future__ import annotations

import math
import time

from policies.ratelimit.model import DAY_S, NEVER, LimitSet, Verdict


def format_duration(seconds: float) -> str:
    """Go-style durations as OpenAI sends them: ``20ms``, ``1.5s``, ``6m0s``."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{max(1, math.ceil(seconds * 1000))}ms"
    if seconds < 60:
        return f"{seconds:.3f}".rstrip("0").rstrip(".") + "s"
    minutes, rest = divmod(seconds, 60)
    if minutes >= 60:
        hours, minutes = divmod(minutes, 60)
        return f"{int(hours)}h{int(minutes)}m{int(rest)}s"
    return f"{int(minutes)}m{int(rest)}s"


def retry_after_value(wait_s: float) -> str:
    """``Retry-After`` in whole seconds, rounded up, at least 1."""
    if wait_s == NEVER:
        return "60"
    return str(max(1, math.ceil(wait_s - 1e-9)))


def reset_s(ls: LimitSet, verdict: Verdict, index: int, speed: float = 1.0,
            wall: float | None = None) -> float:
    """Real seconds until limit ``index`` is whole again (buckets refill; day budgets at UTC midnight)."""
    lim = ls.limits[index]
    level = verdict.levels[index] if index < len(verdict.levels) else lim.capacity
    if lim.kind == "bucket":
        return max(0.0, lim.capacity - level) / lim.rate / speed if lim.rate > 0 else 0.0
    if lim.kind == "day":
        now = time.time() if wall is None else wall
        return (now // DAY_S + 1) * DAY_S - now
    return 0.0


def client_headers(ls: LimitSet, verdict: Verdict, speed: float = 1.0) -> dict[str, str]:
    """OpenAI-style ``x-ratelimit-*`` for a client key: requests from ``rpm``, tokens from ``tpm``
    (else ``daily_tokens``)."""
    out: dict[str, str] = {}
    requests = tokens = -1
    for i, lim in enumerate(ls.limits):
        if lim.name == "rpm":
            requests = i
        elif lim.name == "tpm" or (lim.name == "daily_tokens" and tokens < 0):
            tokens = i
    for (limit_name, remaining_name, reset_name), i in zip(_CLIENT_HEADER_NAMES, (requests, tokens)):
        if i < 0:
            continue
        lim = ls.limits[i]
        level = verdict.levels[i] if i < len(verdict.levels) else lim.capacity
        out[limit_name] = str(int(lim.capacity))
        out[remaining_name] = str(max(0, int(level)))
        out[reset_name] = format_duration(reset_s(ls, verdict, i, speed))
    return out


# (limit, remaining, reset) header names of requests and of tokens: built once, not per answer
_CLIENT_HEADER_NAMES = tuple((f"x-ratelimit-limit-{kind}", f"x-ratelimit-remaining-{kind}",
                              f"x-ratelimit-reset-{kind}") for kind in ("requests", "tokens"))
