"""Where an exchange may be sent, in order: the route's upstream, then its fallbacks.

The retry policy walks this plan: each target gets its own retry loop (its
upstream's retry config, or the route's override for the route's own upstream),
and the next target is tried when one fails before the commit point (retries
spent, breaker open, timeout). A fallback may rewrite the model; without
``model`` it gets the model the primary was sent. Plans are computed once per
(route, upstream) and memoised for the life of the config.
"""
from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from gateway.config_common import TimeoutsConfig
from gateway.config_model import Config, RouteConfig
from gateway.exchange import Exchange
from policies.resilience.balance import Deployment, order, prompt_prefix
from policies.resilience.config import RetryConfig
from policies.resilience.registry import Resilience


@dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    upstream: str  # name of the client to send to (st.upstreams or st.tools)
    key: str  # breaker / budget / metric label: the upstream name, or "tool:<name>"
    model: str | None  # model to send; None keeps the model the primary was sent
    retry: RetryConfig
    first_byte_s: float  # per attempt, up to the commit point
    continuation: str = "none"  # how this upstream can finish a broken stream (UpstreamConfig.continuation)
    balanced: bool = False  # one of the route's deployments: its in-flight count and latency are tracked


Plan = Sequence[Target]
# a balanced route's deployment targets, their balancing entries (same order), its fallbacks
_Deployments = tuple[tuple[Target, ...], tuple[Deployment, ...], tuple[Target, ...]]
ONE_ATTEMPT = RetryConfig(max_attempts=1)


class RoutePlanner:
    """The plan of a chat/completions/embeddings/responses exchange, from its route."""

    def __init__(self, config: Config, res: Resilience | None = None,
                 rand: Callable[[], float] = random.random) -> None:
        self.config = config
        self.res = res
        self.rand = rand
        self._memo: dict[tuple[int, str], tuple[Target, ...]] = {}
        self._context_memo: dict[int, tuple[Target, ...]] = {}
        self._deployments: dict[int, _Deployments] = {}

    def __call__(self, ex: Exchange) -> Plan:
        route = ex.request.route
        if (route is not None and route.targets and self.res is not None
                and ex.target.upstream == route.upstream
                and ex.target.model == (route.model or ex.request.model)):  # not moved to a larger window
            return self._balanced(ex, route, self.res)
        key = (id(route), ex.target.upstream)
        plan = self._memo.get(key)
        if plan is None:
            plan = self._memo[key] = self._plan(route, ex.target.upstream)
        return plan

    def context_plan(self, ex: Exchange) -> Plan:
        """The route's ``context_fallbacks``: where a "prompt too long" 400 goes next (may be empty)."""
        route = ex.request.route
        if route is None or not route.context_fallbacks:
            return ()
        plan = self._context_memo.get(id(route))
        if plan is None:
            plan = self._context_memo[id(route)] = tuple(
                self._target(fb.upstream, fb.model, None) for fb in route.context_fallbacks
                if fb.upstream in self.config.upstreams)
        return plan

    def _balanced(self, ex: Exchange, route: RouteConfig, res: Resilience) -> Plan:
        """The route's deployments, best first for this request, then its fallbacks."""
        memo = self._deployments.get(id(route))
        if memo is None:
            memo = self._deployments[id(route)] = self._deployment_plan(route)
        targets, deployments, fallbacks = memo
        prefix = prompt_prefix(ex.body) if route.affinity == "prefix" else None
        picked = order(deployments, res.load, res.admits, self.rand, prefix or None)
        return (*(targets[i] for i in picked), *fallbacks)

    def _deployment_plan(self, route: RouteConfig) -> _Deployments:
        ups = self.config.upstreams
        listed = [(d.upstream, d.model, d.weight) for d in route.targets if d.upstream in ups]
        if all(up != route.upstream for up, _, _ in listed):
            listed.insert(0, (route.upstream, None, 1.0))
        targets = tuple(replace(self._target(up, model, route if up == route.upstream else None),
                                balanced=True) for up, model, _ in listed)
        deployments = tuple(Deployment(up, weight) for up, _, weight in listed)
        fallbacks = tuple(self._target(fb.upstream, fb.model, None) for fb in route.fallbacks
                          if fb.upstream in self.config.upstreams)
        return targets, deployments, fallbacks

    def _plan(self, route: RouteConfig | None, upstream: str) -> tuple[Target, ...]:
        own = route is not None and route.upstream == upstream
        primary = self._target(upstream, None, route if own else None)
        if route is None:
            return (primary,)
        fallbacks = tuple(self._target(fb.upstream, fb.model, None) for fb in route.fallbacks
                          if fb.upstream in self.config.upstreams)
        return (primary, *fallbacks)

    def _target(self, upstream: str, model: str | None, route: RouteConfig | None) -> Target:
        up = self.config.upstreams.get(upstream)
        retry = route.retry if route is not None and route.retry else (up.retry if up else ONE_ATTEMPT)
        timeouts = route.timeouts if route is not None and route.timeouts else (up.timeouts if up else None)
        first_byte_s = timeouts.first_byte_s if timeouts is not None else TimeoutsConfig().first_byte_s
        return Target(upstream=upstream, key=upstream, model=model, retry=retry, first_byte_s=first_byte_s,
                      continuation=up.continuation if up else "none")


def tool_targets(name: str, key: str, retry: RetryConfig, first_byte_s: float,
                 read: bool) -> tuple[Target, ...]:
    """A tool route has no fallback upstreams; a write gets exactly one attempt."""
    cfg = retry if read else replace(retry, max_attempts=1)
    return (Target(upstream=name, key=key, model=None, retry=cfg, first_byte_s=first_byte_s),)


def switch_to(ex: Exchange, target: Target, primary_model: str) -> None:
    """Point the exchange at a fallback: upstream, model sent, and the body's ``model``."""
    ex.target.upstream = target.upstream
    model = target.model or primary_model
    if model and model != ex.target.model:
        ex.target.model = model
        if ex.body is not None:
            ex.set_body({**ex.body, "model": model})
