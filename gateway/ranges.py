"""Value ranges of request fields: judged by the gateway only on routes that opt in.

Providers differ in what they accept (a temperature of 3, ``n`` above 128, a huge ``max_tokens``),
so by default (``routes[].validate: provider``) the gateway forwards such values and the provider's
own error passes through unchanged. ``strict`` answers out-of-range values with the gateway's own
400 ``invalid_value`` (OpenAI's documented ranges) before anything is spent; ``shadow`` only counts
what ``strict`` would refuse. Types are always checked (``gateway/request_schema.py``): the gateway
reads them.

Decisions are counted in ``gateway_policy_decisions_total{policy="validation"}``: ``ok``,
``refused`` (strict) and ``would_refuse`` (shadow).
"""
from __future__ import annotations

from typing import Any

from gateway.config_model import ValidateMode
from gateway.errors import LocalReply, bad_request
from gateway.telemetry.metrics import Metrics

MAX_TOKENS_PARAM = 2**31 - 1  # no model writes two billion tokens
# field -> (low, high), inclusive; OpenAI's documented ranges.
RANGES: dict[str, tuple[float, float]] = {
    "temperature": (0.0, 2.0),
    "top_p": (0.0, 1.0),
    "presence_penalty": (-2.0, 2.0),
    "frequency_penalty": (-2.0, 2.0),
    "n": (1, 128),
    "top_logprobs": (0, 20),
    "max_tokens": (1, MAX_TOKENS_PARAM),
    "max_completion_tokens": (1, MAX_TOKENS_PARAM),
    "max_output_tokens": (1, MAX_TOKENS_PARAM),
}


def out_of_range(body: dict[str, Any]) -> LocalReply | None:
    """The 400 for the first field outside its range, or None (non-numbers are the type check's)."""
    for name, (low, high) in RANGES.items():
        value = body.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if not low <= value <= high:
            return bad_request(
                f"Invalid '{name}': must be between {low:g} and {high:g}.", param=name, code="invalid_value"
            )
    return None


def check(mode: ValidateMode, body: dict[str, Any], metrics: Metrics) -> None:
    """Judge ``body``'s value ranges as the route's ``validate`` mode says; raises the 400 in ``strict``."""
    if mode == "provider":
        return
    reply = out_of_range(body)
    if reply is None:
        metrics.decision("validation", "ok")
    elif mode == "strict":
        metrics.decision("validation", "refused")
        raise reply
    else:
        metrics.decision("validation", "would_refuse")
