"""Where an exchange may be sent, in order: the route's upstream, then its fallbacks.

The retry policy walks this plan: each target gets its own retry loop (its
upstream's retry config, or the route's override for the route's own upstream),
and the next target is tried when one fails before the commit point (retries
spent, breaker open, timeout). A fallback may rewrite the model; without
``model`` it gets the model the primary was sent. Plans are computed once per
(route, upstream) and memoised for the life of the config.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from gateway.config_common import TimeoutsConfig
from gateway.config_model import Config, RouteConfig
from gateway.exchange import Exchange
from policies.resilience.config import RetryConfig


@dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    upstream: str  # name of the client to send to (st.upstreams or st.tools)
    key: str  # breaker / budget / metric label: the upstream name, or "tool:<name>"
    model: str | None  # model to send; None keeps the model the primary was sent
    retry: RetryConfig
    first_byte_s: float  # per attempt, up to the commit point
    continuation: str = "none"  # how this upstream can finish a broken stream (UpstreamConfig.continuation)


Plan = Sequence[Target]
ONE_ATTEMPT = RetryConfig(max_attempts=1)


class RoutePlanner:
    """The plan of a chat/completions/embeddings/responses exchange, from its route."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._memo: dict[tuple[int, str], tuple[Target, ...]] = {}
        self._context_memo: dict[int, tuple[Target, ...]] = {}

    def __call__(self, ex: Exchange) -> Plan:
        route = ex.request.route
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
