"""Count a request's prompt tokens once and share the figure.

Rate limiting (reservation), budgets, compression, usage estimation and the
ledger all need the prompt size; tokenising a 50k-token prompt costs
milliseconds, so it is done at most once per request and memoised on the
record. A policy that rewrites the messages (compression) must store the
new count with ``set_prompt_tokens`` so later layers see the real size.

Large prompts are counted off the event loop: ``count_prompt`` (awaited by the handler before
the chain when a built layer reads every prompt's size, and by whoever needs one figure: the
embeddings token limit, a usage estimate) sends any body whose byte bound exceeds
``INLINE_MAX_BYTES`` to the work pool, which falls back to an estimate over budget or on a
tokenizer failure; the synchronous ``prompt_tokens`` then only reads the figure. Nobody reading
it, nothing is counted. Small bodies are counted inline, lazily, as before;
their first count loads the encoding off the loop only when a built layer counts every request
(``Runtime.counts_prompts``), so a config without one never loads an encoding up front.
"""
from __future__ import annotations

import asyncio
from functools import partial

from gateway.appstate import AppState
from gateway.exchange import Exchange
from gateway.tokens.bounds import estimate, upper_bound
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
            model = body.get("model")
            if loaded(st, model if isinstance(model, str) else ""):
                cached = st.tokenizer.count_request(ex.request.operation, body)
            else:  # never load an encoding on the loop: estimate this one, the next ones count
                cached = estimate(prompt_bound(ex))
        ex.record.prompt_tokens = cached
    return cached


def loaded(st: AppState, model: str) -> bool:
    """Whether ``model``'s encoding is loaded; if not, its load starts in a thread (not waited for)."""
    name = st.tokenizer.encoding_name_for(model)
    if st.tokenizer.is_loaded(name):
        return True
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # in a worker thread already: loading here blocks nobody
        st.tokenizer.encoding(name)
        return True
    st.work.warm(name, partial(st.tokenizer.encoding, name))
    return False


async def count_prompt(st: AppState, ex: Exchange, *, needed: bool = False) -> None:
    """Count a large prompt in the work pool now, so no later ``prompt_tokens`` runs it on the loop.

    Only when somebody reads the figure: a built layer that reads every request's size
    (``Runtime.counts_prompts``), or the caller (``needed``: the embeddings token limit, a usage estimate).
    Otherwise nothing is counted: with the default config a 500 KB prompt would cost ~25 ms of CPU to
    tokenise for nobody (the provider reports the usage)."""
    if ex.record.prompt_tokens is not None:
        return
    if ex.body is None or ex.request.operation not in COUNTED_OPERATIONS:
        return
    if not needed and not st.runtime.counts_prompts:
        return  # nobody reads every request's count: counted when someone asks (``needed``)
    body = ex.body if "model" in ex.body else {**ex.body, "model": ex.target.model}
    model = body.get("model")
    name = st.tokenizer.encoding_name_for(model if isinstance(model, str) else "")
    if not st.tokenizer.is_loaded(name):  # the first use loads it (~0.2 s): off the loop, once
        await st.work.once(name, lambda: st.tokenizer.encoding(name))
    bound = prompt_bound(ex)
    if bound <= INLINE_MAX_BYTES:
        return  # counted lazily, inline, when a layer asks (the encoding is loaded now)
    operation = ex.request.operation
    # Over budget, queue full or a tokenizer failure: the byte bound, never an undercount, so a token
    # rate limit still holds (the provider's usage settles the real cost).
    ex.record.prompt_tokens = await st.work.run(ex.request.namespace, "prompt_tokens",
                                                lambda: st.tokenizer.count_request(operation, body),
                                                lambda: bound)


async def exact_prompt_tokens(st: AppState, ex: Exchange) -> int:
    """``prompt_tokens``, but never an estimate for want of a loaded encoding, and a large prompt counted
    in the work pool (both off the loop)."""
    await count_prompt(st, ex, needed=True)
    return prompt_tokens(st, ex)


def loading_for_estimate(st: AppState, ex: Exchange) -> asyncio.Future[object] | None:
    """For a finished exchange whose usage must be estimated (an upstream answered 2xx without reporting
    any): the work its estimate needs, started off the loop (the encoding's load, once per encoding and
    process; a large prompt's count, in the work pool); settle the record when it is done, so the estimate
    is a real count. None: settle now."""
    rec = ex.record
    if rec.reported_usage is not None or rec.source != "upstream" or not 200 <= rec.status < 300:
        return None
    if ex.request.operation not in COUNTED_OPERATIONS:
        return None
    if rec.prompt_tokens is None and prompt_bound(ex) > INLINE_MAX_BYTES:
        return asyncio.ensure_future(count_prompt(st, ex, needed=True))
    name = st.tokenizer.encoding_name_for(ex.target.model or ex.request.model)
    if st.tokenizer.is_loaded(name):
        return None
    return st.work.warm(name, partial(st.tokenizer.encoding, name))


def set_prompt_tokens(ex: Exchange, count: int) -> None:
    ex.record.prompt_tokens = count
