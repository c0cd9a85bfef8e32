"""``/v1/embeddings`` limits that match the provider's, checked before any work is done.

OpenAI accepts at most 2,048 inputs and 300k tokens in one embeddings request; a body with
100k-400k inputs cost seconds of event-loop time and hundreds of MB before the provider
refused it (issue 15). The gateway refuses it first with the provider's 400, naming the limit.
Set per upstream: ``upstreams.<name>.limits.embeddings_max_inputs`` / ``embeddings_max_tokens``.
The input count is checked as soon as the route is known; the token count after the prompt was
counted (off the loop for a large body), before the chain.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.appstate import AppState
from gateway.config_model import UpstreamLimits
from gateway.errors import LocalReply, bad_request
from gateway.exchange import Exchange
from gateway.tokens.prompt import exact_prompt_tokens, prompt_bound


def input_count(body: Mapping[str, Any]) -> int:
    """Inputs in ``input``: one for a string or a single token array, else the list's length."""
    value = body.get("input")
    if isinstance(value, list) and value and not isinstance(value[0], int):
        return len(value)
    return 1


def check_inputs(body: Mapping[str, Any], limits: UpstreamLimits) -> None:
    count = input_count(body)
    if count > limits.embeddings_max_inputs:
        raise _too_many(f"'$.input' has {count} items; at most {limits.embeddings_max_inputs} inputs are "
                        "allowed in one embeddings request (upstreams.<name>.limits.embeddings_max_inputs).")


async def check_tokens(st: AppState, ex: Exchange) -> None:
    """Over the upstream's token limit: 400. The byte bound decides first; only a body that might be
    over it is counted (already done off the loop by ``count_prompt`` for a large one)."""
    upstream = st.config.upstreams.get(ex.target.upstream)
    if ex.request.operation != "embeddings" or upstream is None:
        return
    limits = upstream.limits
    if prompt_bound(ex) <= limits.embeddings_max_tokens:
        return
    tokens = await exact_prompt_tokens(st, ex)
    if tokens > limits.embeddings_max_tokens:
        raise _too_many(f"Requested {tokens} tokens; at most {limits.embeddings_max_tokens} tokens are "
                        "allowed in one embeddings request (upstreams.<name>.limits.embeddings_max_tokens).")


def _too_many(message: str) -> LocalReply:
    return bad_request(message, param="input", code="invalid_value")
