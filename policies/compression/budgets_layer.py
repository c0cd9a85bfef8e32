"""Budget policy: give every request an output limit the operator chose.

A request without ``max_tokens`` lets the provider generate up to the model's
maximum, which is what a runaway agent costs; the rate limiter must also
reserve that much. This layer fills in a limit when the client sent none (the
first matching ``classes`` entry, else ``default_max_tokens``) and clamps (or,
with ``on_exceed: reject``, refuses) limits over ``max_tokens_cap``. Classes
are configuration, not hard-coded phrases: ``{match: {max_prompt_tokens: 50},
max_tokens: 256}`` gives short chit-chat a small budget, ``{match: {regex:
"(?i)analy[sz]e|report"}, max_tokens: 4000}`` gives long analysis a large one.

Placed right inside compression (so a class sees the compressed prompt size)
and outside retry (every attempt carries the same limit). ``enforce: false``
counts the decisions and sends requests as they are.
"""
from __future__ import annotations

import re
from functools import partial
from typing import Any

from gateway.appstate import AppState
from gateway.chain import Next
from gateway.config_model import Config
from gateway.errors import LocalReply
from gateway.exchange import Exchange, UpstreamResponse
from gateway.telemetry.metrics import Children
from gateway.tokens.prompt import prompt_tokens
from policies.compression.budgets_config import BudgetClass, BudgetsConfig
from policies.compression.prompt_fit import BudgetDecision, choose_class, decide, last_user_text

OPERATIONS = frozenset({"chat", "completions", "responses"})


class BudgetPolicy:
    name = "budget"
    counts_prompts = True  # reads every request's prompt size: see Runtime.counts_prompts

    def __init__(self, state: AppState, config: Config, patterns: dict[str, re.Pattern[str]]) -> None:
        self.state = state
        self.config = config
        self.patterns = patterns
        self.decisions = Children(state.metrics.counter("gateway_budget_decisions_total",
                                                        "Output-limit decisions of the budget policy",
                                                        ("route", "decision")))

    async def __call__(self, ex: Exchange, next: Next) -> UpstreamResponse:
        if ex.request.operation in OPERATIONS and ex.body is not None:
            self.apply(ex)
        return await next(ex)

    def apply(self, ex: Exchange) -> None:
        """Set, clamp or refuse the request's output limit (see the module docstring)."""
        route = ex.request.route
        cfg: BudgetsConfig = (route.budgets if route is not None else None) or self.config.budgets
        if not active(cfg):
            return
        body: dict[str, Any] = ex.body  # type: ignore[assignment]
        asked = body.get("model")
        model = asked if isinstance(asked, str) else ex.target.model
        chosen = partial(choose_class, cfg.classes, self.patterns, partial(prompt_tokens, self.state, ex),
                         partial(last_user_text, body, ex.request.operation)) if cfg.classes else _no_class
        verdict = decide(body, ex.request.operation, model, cfg, chosen)
        label = verdict.decision if cfg.enforce else "shadow_" + verdict.decision
        self.decisions.slot(ex.request.route_name, label).inc(1)
        self.state.metrics.decision(self.name, label)
        if not cfg.enforce:
            return
        if verdict.decision == "rejected":
            raise too_many_tokens(verdict)
        if verdict.updates:
            ex.set_body({**body, **verdict.updates})


def _no_class() -> BudgetClass | None:
    """No classes configured: nothing to choose (``decide`` does not ask), so no closures are built."""
    return None


def active(cfg: BudgetsConfig) -> bool:
    return cfg.default_max_tokens is not None or cfg.max_tokens_cap is not None or bool(cfg.classes)


def too_many_tokens(verdict: BudgetDecision) -> LocalReply:
    return LocalReply(
        400,
        f"The requested output limit ({verdict.requested} tokens) is above this route's cap of "
        f"{verdict.cap} tokens. Ask for at most {verdict.cap}.",
        code="max_tokens_exceeded", param="max_tokens",
    )


async def make_budget(state: AppState, config: Config) -> BudgetPolicy | None:
    """The policy, or None when no budgets block (global or route) sets anything."""
    blocks = [b for b in (config.budgets, *(r.budgets for r in config.routes)) if b is not None]
    if not any(active(b) for b in blocks):
        return None
    patterns = {c.match.regex: re.compile(c.match.regex) for b in blocks for c in b.classes if c.match.regex}
    return BudgetPolicy(state, config, patterns)
