"""The long-lived resilience state of the app: one breaker and one retry budget per upstream/tool.

Created by the first policy factory that needs it and kept in
``state.components["resilience"]``; a config reload re-runs ``sync`` which adds
breakers for new upstreams and updates the config of existing ones in place, so
an open breaker stays open across a reload. ``state.components["breakers"]`` is
the same dict of breakers, for /admin/stats and the dashboard (``.state``,
``.since``). Tool providers are keyed ``tool:<name>``.
"""
from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from functools import partial

from gateway.appstate import AppState
from gateway.components import BREAKER_STATES, QUOTA_PAUSED, BreakerRows, QuotaPaused
from gateway.config_model import Config
from gateway.exchange import Exchange, LayerState, StateKey
from gateway.telemetry.logging import state_change
from policies.resilience.balance import Load
from policies.resilience.breaker import STATE_VALUE, CircuitBreaker
from policies.resilience.config import CircuitBreakerConfig, RetryConfig
from policies.resilience.hedge import TtftWindows
from policies.resilience.metrics import TIMEOUT_PHASE, ResilienceMetrics
from policies.resilience.retry_budget import RetryBudget
from policies.resilience.shared import SharedBreakers

TOOL_PREFIX = "tool:"
COMPONENT: StateKey[Resilience] = StateKey("resilience")  # declared before the class: annotations are lazy


class Resilience:
    def __init__(self, metrics: ResilienceMetrics, clock: Callable[[], float],
                 rand: Callable[[], float] = random.random) -> None:
        self.metrics = metrics
        self.clock = clock
        self.rand = rand
        self.breakers: dict[str, CircuitBreaker] = {}
        self.budgets: dict[str, RetryBudget] = {}
        self.shared: SharedBreakers | None = None  # set when a state backend (host or fleet) runs
        self.ttft = TtftWindows()  # recent times to first token, for ``hedge: {after: p95}``
        self.loads: dict[str, Load] = {}  # per deployment (upstream key): in flight, latency EWMA
        self.quota_paused: QuotaPaused = _never_paused  # the rate-limit feature's view (QUOTA_PAUSED)

    def sync(self, config: Config) -> None:
        for name, up in config.upstreams.items():
            self._ensure(name, up.circuit_breaker, up.retry)
        for name, tool in config.tools.items():
            self._ensure(TOOL_PREFIX + name, tool.circuit_breaker, tool.retry)

    def breaker(self, key: str) -> CircuitBreaker:
        found = self.breakers.get(key)
        return found if found is not None else self._ensure(key, CircuitBreakerConfig(), RetryConfig())

    def load(self, key: str) -> Load:
        found = self.loads.get(key)
        if found is None:
            found = self.loads[key] = Load()
        return found

    def admits(self, key: str) -> bool:
        """Should a balanced route send here first? Not while its breaker is open or its quota is paused
        after a provider 429 (such deployments go after the others, before the fallbacks)."""
        if self.breaker(key).rejecting():
            return False
        if self.quota_paused(key) > 0:
            self.metrics.decision("balance", "skip_paused_quota")
            return False
        return True

    def budget(self, key: str) -> RetryBudget:
        found = self.budgets.get(key)
        if found is None:
            self._ensure(key, CircuitBreakerConfig(), RetryConfig())
            found = self.budgets[key]
        return found

    def _ensure(self, key: str, breaker_cfg: CircuitBreakerConfig, retry_cfg: RetryConfig) -> CircuitBreaker:
        breaker = self.breakers.get(key)
        if breaker is None:
            breaker = self.breakers[key] = CircuitBreaker(key, breaker_cfg, self.clock, self.rand,
                                                          on_change=self._changed, on_decision=self._decided)
            self.metrics.child(self.metrics.circuit_state, key).set(0)
            if self.shared is not None:
                self.shared.attach(breaker)
        else:
            breaker.config = breaker_cfg
        budget = self.budgets.get(key)
        if budget is None:
            self.budgets[key] = RetryBudget(retry_cfg, self.clock)
        else:
            budget.configure(retry_cfg)
        return breaker

    def _changed(self, breaker: CircuitBreaker, old: str, new: str) -> None:
        self.metrics.state(breaker.name, new, STATE_VALUE[new])
        fields: dict[str, object] = {"component": "circuit_breaker", "upstream": breaker.name, "from": old,
                                     "to": new, "enforce": breaker.config.enforce}
        if new == "open":
            fields["open_for_s"] = round(max(0.0, breaker.open_until - self.clock()), 3)
            fields["openings"] = breaker.openings
        state_change(f"circuit {new}", **fields)
        if self.shared is not None:
            self.shared.changed(breaker, old, new)

    def _decided(self, breaker: CircuitBreaker, decision: str) -> None:
        self.metrics.decision("circuit_breaker", decision)

    def on_finished(self, ex: Exchange) -> None:
        """Sink: count timeouts that cut an answer already on its way (idle/total mid-stream).

        Failures before the commit point are counted by the retry policy; these happen
        after it, in the relay, so they are read off the finished exchange instead of
        wrapping every chunk of every stream.
        """
        phase = TIMEOUT_PHASE.get(ex.record.error_kind)
        if phase is not None and ex.record.stream_outcome in ("error_event", "cut"):
            key = TOOL_PREFIX + ex.target.upstream if ex.request.operation == "tool" else ex.target.upstream
            self.metrics.child(self.metrics.timeouts, key, phase).inc()


def _never_paused(_upstream: str) -> float:
    return 0.0


def _paused_in(components: LayerState, upstream: str) -> float:
    """The rate-limit feature's pause of ``upstream``, looked up per call (it may start later, or never)."""
    paused = components.get(QUOTA_PAUSED)
    return paused(upstream) if paused is not None else 0.0


def _breaker_rows(breakers: Mapping[str, CircuitBreaker]) -> list[tuple[str, str, float | None]]:
    return [(str(name), b.state, b.since) for name, b in breakers.items()]


def resilience_of(state: AppState, config: Config) -> Resilience:
    """The app's ``Resilience`` (created on first use), synced with ``config``."""
    res = state.components.get(COMPONENT)
    if res is None:
        res = Resilience(ResilienceMetrics(state.metrics), state.clock)
        state.components.set(COMPONENT, res)
        breakers = res.breakers
        rows: BreakerRows = partial(_breaker_rows, breakers)
        state.components.set(BREAKER_STATES, rows)
        state.sinks.append(res.on_finished)
        res.quota_paused = partial(_paused_in, state.components)
        if state.backend is not None:
            res.shared = SharedBreakers(state.backend, config.state.key_prefix, res.breakers, state.clock,
                                        decision=partial(res.metrics.decision, "circuit_breaker"))
            res.shared.start()
            state.closers.append(res.shared.close)
    res.sync(config)
    return res
