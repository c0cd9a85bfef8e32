"""Compression policy: fit every chat request into its model's token budget.

Sits inside the caches and the client rate limiter (the cache key is taken on
what the client sent) and outside retry, so every attempt carries the same
compressed body. A request that fits is not touched and costs one comparison
(its prompt size is counted once per request by ``gateway.tokens.prompt`` and
shared). An oversized one goes through ``gateway.compress``; the result is sent
re-serialised (``ex.set_body``) and its new size stored for the layers after
this one. A request that cannot be made to fit is answered here with 400
``context_length_exceeded``, instead of being sent to a provider that would
refuse it after queueing and billing nothing useful.

Config: ``compression:`` (global, merged per route) and ``models:`` (context
windows). ``enforce: false`` counts what would happen and sends requests as
they are. Per request, ``x-gateway-compression: off`` opts out. The response
says ``x-gateway-tokens-saved: N`` whenever the request had a budget.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from typing import Any

from gateway.appstate import AppState
from gateway.chain import Next
from gateway.config_model import Config
from gateway.errors import LocalReply
from gateway.exchange import Exchange, UpstreamResponse
from gateway.tokens.pool import INLINE_MAX_BYTES
from gateway.tokens.prompt import prompt_bound, prompt_tokens, set_prompt_tokens
from policies.compression.config import CompressionConfig
from policies.compression.engine import CompressionBug, Outcome, Plan, compress
from policies.compression.meter import tokenizer_meter
from policies.compression.prompt_fit import (
    PromptBudget,
    model_info,
    output_reserve,
    prompt_budget,
    requested_output,
)

log = logging.getLogger("gateway.compression")
OPT_OUT_HEADER = "x-gateway-compression"
SAVED_HEADER = "x-gateway-tokens-saved"
RATIO_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)


@dataclass(frozen=True, slots=True)
class _Job:
    body: dict[str, Any]
    messages: list[dict[str, Any]]
    cfg: CompressionConfig
    limits: PromptBudget


class CompressionPolicy:
    name = "compression"
    counts_prompts = True  # reads every request's prompt size: see Runtime.counts_prompts

    def __init__(self, state: AppState, config: Config) -> None:
        self.state = state
        self.config = config
        m = state.metrics
        self.saved = m.counter("gateway_compression_tokens_saved_total",
                               "Prompt tokens removed by compression", ("route", "step"))
        self.ratio = m.histogram("gateway_compression_ratio",
                                 "Prompt tokens after / before, compressed requests", buckets=RATIO_BUCKETS)
        self.rejected = m.counter("gateway_compression_rejected_total",
                                  "Requests answered context_length_exceeded because they could not fit",
                                  ("route",))

    async def __call__(self, ex: Exchange, next: Next) -> UpstreamResponse:
        if ex.request.operation == "chat" and ex.body is not None:
            job = self.prepare(ex)
            if job is not None and prompt_bound(ex) > INLINE_MAX_BYTES:  # a large prompt: off the loop
                outcome = await self.state.work.run(ex.request.namespace, "compression",
                                                    partial(self._run, ex, job), lambda: None)
                if outcome is None:
                    self._decide("error")
                else:
                    self._act(ex, job.body, job.cfg, job.limits, outcome)
            elif job is not None:
                self._finish(ex, job)
        return await next(ex)

    def apply(self, ex: Exchange) -> None:
        """Compress ``ex`` in place if it is over its budget (or raise the 400)."""
        job = self.prepare(ex)
        if job is not None:
            self._finish(ex, job)

    def prepare(self, ex: Exchange) -> _Job | None:
        """What compressing ``ex`` needs, or None when it is not compressed (decision counted)."""
        route = ex.request.route
        cfg: CompressionConfig = (route.compression if route is not None else None) or self.config.compression
        if not cfg.enabled:
            return None
        if ex.request.headers.get(OPT_OUT_HEADER, "").strip().lower() == "off":
            self._decide("opted_out")
            return None
        body: dict[str, Any] = ex.body  # type: ignore[assignment]
        limits = self._limits(ex, body, cfg)
        if limits is None:
            self._decide("no_budget")
            return None
        # A count already taken (a token rate limit) answers at once; else the byte bound answers "fits" for
        # most requests without counting (a 40 KB prompt fits 128k). The count is never above the bound.
        counted = ex.record.prompt_tokens
        if counted is not None:
            fits = counted <= limits.budget
        else:
            fits = prompt_bound(ex) <= limits.budget or prompt_tokens(self.state, ex) <= limits.budget
        if fits:
            ex.response_headers[SAVED_HEADER] = "0"
            self._decide("fits")
            return None
        if cfg.enforce and self._to_larger_window(ex, body, cfg):
            self._decide("context_fallback")
            return None
        messages = body.get("messages")
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            self._decide("not_applicable")  # malformed: the provider will say what is wrong
            return None
        return _Job(body, messages, cfg, limits)

    def _finish(self, ex: Exchange, job: _Job) -> None:
        outcome = self._run(ex, job)
        if outcome is None:
            self._decide("error")
        else:
            self._act(ex, job.body, job.cfg, job.limits, outcome)

    def _run(self, ex: Exchange, job: _Job) -> Outcome | None:
        """The compression itself (pure: reads ``ex``, changes nothing); None when it failed."""
        try:
            return self._compress(ex, job.body, job.messages, job.cfg, job.limits)
        except CompressionBug:
            log.error("compression produced an invalid conversation; request sent unchanged",
                      extra={"fields": {"route": ex.request.route_name}})
            return None
        except Exception:  # a bug here must cost the saving, never the request
            log.exception("compression failed; request sent unchanged",
                          extra={"fields": {"route": ex.request.route_name}})
            return None

    def _to_larger_window(self, ex: Exchange, body: dict[str, Any], cfg: CompressionConfig) -> bool:
        """Send a prompt too long for its model to the first ``context_fallbacks`` model it fits whole
        (issue 18): a larger window loses nothing, compression would. The retry policy then plans from it."""
        route = ex.request.route
        if route is None or not route.context_fallbacks:
            return False
        tokens = prompt_tokens(self.state, ex)
        budgets = route.budgets or self.config.budgets
        for fb in route.context_fallbacks:
            model = fb.model or ex.target.model
            info = model_info(self.config.models, model)
            limits = prompt_budget(cfg, info, output_reserve(requested_output(body, "chat"), budgets, info))
            if limits is not None and tokens <= limits.budget and fb.upstream in self.config.upstreams:
                ex.target.upstream, ex.target.model = fb.upstream, model
                ex.set_body({**body, "model": model})
                return True
        return False

    def _limits(self, ex: Exchange, body: dict[str, Any], cfg: CompressionConfig) -> PromptBudget | None:
        info = model_info(self.config.models, ex.target.model, ex.request.model)
        route = ex.request.route
        budgets = (route.budgets if route is not None else None) or self.config.budgets
        reserve = output_reserve(requested_output(body, "chat"), budgets, info)
        return prompt_budget(cfg, info, reserve)

    def _compress(self, ex: Exchange, body: dict[str, Any], messages: list[dict[str, Any]],
                  cfg: CompressionConfig, limits: PromptBudget) -> Outcome:
        tokenizer = self.state.tokenizer
        asked = body.get("model")
        model = asked if isinstance(asked, str) else ex.target.model
        fixed = tokenizer.count_tools(model, body.get("tools") or ()) + \
            tokenizer.count_tools(model, body.get("functions") or ())
        plan = Plan(budget=limits.budget, tool_output_max_tokens=cfg.tool_output_max_tokens,
                    keep_last_turns=cfg.keep_last_turns, min_saving_tokens=cfg.min_saving_tokens,
                    stable_prefix=cfg.stable_prefix)
        return compress(messages, plan, tokenizer_meter(tokenizer, model, fixed))

    def _act(self, ex: Exchange, body: dict[str, Any], cfg: CompressionConfig, limits: PromptBudget,
             outcome: Outcome) -> None:
        shadow = "" if cfg.enforce else "shadow_"
        if not outcome.fits:
            self._decide(shadow + "rejected")
            if cfg.enforce:
                self.rejected.labels(ex.request.route_name).inc()
                raise context_length_exceeded(limits, outcome)
            return
        self._decide(shadow + "compressed")
        if not cfg.enforce:
            return
        for step, tokens in outcome.saved.items():
            self.saved.labels(ex.request.route_name, step).inc(tokens)
        self.ratio.observe(outcome.after / outcome.before)
        ex.set_body({**body, "messages": list(outcome.messages)})
        set_prompt_tokens(ex, outcome.after)
        ex.response_headers[SAVED_HEADER] = str(outcome.before - outcome.after)

    def _decide(self, decision: str) -> None:
        self.state.metrics.decision(self.name, decision)


def context_length_exceeded(limits: PromptBudget, outcome: Outcome) -> LocalReply:
    """The 400 OpenAI answers for an oversized prompt, with our counts in the message."""
    window = f"{limits.context_window} tokens of context window, " if limits.context_window else ""
    return LocalReply(
        400,
        f"This request has {outcome.before} prompt tokens, and {outcome.after} after compression; the budget "
        f"for this model is {limits.budget} prompt tokens ({window}{limits.output_reserve} reserved for the "
        f"output). Please reduce the length of the messages.",
        code="context_length_exceeded", param="messages",
    )


async def make_compression(state: AppState, config: Config) -> CompressionPolicy | None:
    """The policy, or None when no request could have a budget: no enabled block, or
    no context window in ``models:`` and no ``max_prompt_tokens`` anywhere."""
    blocks = [b for b in (config.compression,
                          *(r.compression for r in config.routes)) if b is not None and b.enabled]
    windows = any(m.context_window for m in config.models.values())
    if not blocks or not (windows or any(b.max_prompt_tokens for b in blocks)):
        return None
    return CompressionPolicy(state, config)
