"""Count a request's prompt tokens once and share the figure.

Rate limiting (reservation), budgets, compression, usage estimation and the
ledger all need the prompt size; tokenising a 50k-token prompt costs
milliseconds, so it is done at most once per request and memoised on the
record. A policy that rewrites the messages (compression) must store the
new count with ``set_prompt_tokens`` so later layers see the real size.

Large prompts are counted off the event loop: ``count_prompt`` (awaited by the handler before
the chain) sends any body whose byte bound exceeds ``INLINE_MAX_BYTES`` to the work pool, which
falls back to an estimate over budget or on a tokenizer failure; the synchronous
``prompt_tokens`` then only reads the figure. Small bodies are counted inline, lazily, as before.
"""
from __future__ import annotations

from gateway.appstate import AppState
from gateway.exchange import Exchange
from gateway.tokens.bounds import upper_bound
from gateway.tokens.pool import INLINE_MAX_BYTES

COUNTED_OPERATIONS = ("chat", "completions", "embeddings", "responses")


def prompt_bound(ex: Exchange) -> int:
    """The cheap upper bound of this request's prompt (see ``gateway.tokens.bounds``)."""
    if ex.body is None or ex.request.operation not in COUNTED_OPERATIONS:
        return 0
    return upper_bound(ex.request.operation, ex.body)


def prompt_tokens(st: AppState, ex: Exchange) -> int:
    """The prompt's token count, counted once per request (``record.prompt_tokens``)."""
    cached = ex.record.prompt_tokens
    if cached is None:
        if ex.body is None or ex.request.operation not in COUNTED_OPERATIONS:
            cached = 0
        else:
            body = ex.body if "model" in ex.body else {**ex.body, "model": ex.target.model}
            cached = st.tokenizer.count_request(ex.request.operation, body)
        ex.record.prompt_tokens = cached
    return cached


async def count_prompt(st: AppState, ex: Exchange) -> None:
    """Count a large prompt in the work pool now, so no later ``prompt_tokens`` runs it on the loop."""
    if ex.record.prompt_tokens is not None:
        return
    if ex.body is None or ex.request.operation not in COUNTED_OPERATIONS:
        return
    body = ex.body if "model" in ex.body else {**ex.body, "model": ex.target.model}
    model = body.get("model")
    name = st.tokenizer.encoding_name_for(model if isinstance(model, str) else "")
    if not st.tokenizer.is_loaded(name):  # the first use loads it (~0.2 s): off the loop, once
        await st.work.once(name, lambda: st.tokenizer.encoding(name))
    bound = prompt_bound(ex)
    if bound <= INLINE_MAX_BYTES:
        return  # counted lazily, inline, if anyone asks
    operation = ex.request.operation
    # Over budget, queue full or a tokenizer failure: the byte bound, never an undercount, so a token
    # rate limit still holds (the provider's usage settles the real cost).
    ex.record.prompt_tokens = await st.work.run(ex.request.namespace, "prompt_tokens",
                                                lambda: st.tokenizer.count_request(operation, body),
                                                lambda: bound)


def set_prompt_tokens(ex: Exchange, count: int) -> None:
    ex.record.prompt_tokens = count
