"""Circuit breaker per upstream: CLOSED -> OPEN -> HALF_OPEN -> CLOSED.

CLOSED opens on ``consecutive_failures`` in a row, or when at least ``min_calls``
outcomes in the last ``window_s`` have a failure share of ``failure_ratio``. OPEN
rejects (fast: no I/O) for ``open_s``, doubled with each consecutive opening up to
``max_open_s`` (short by default, 4 s growing to 6 s, so a recovered upstream gets traffic back
soon: issue 18) and shortened by up to 20% of jitter so replicas do not probe in
lock-step. Then HALF_OPEN admits ``half_open_probes`` requests: the first alone,
the others once it succeeded; as many successes close it, one failure opens it
again (so a still-broken upstream sees one probe per open interval). Only
upstream failures count: 4xx, 429 and the gateway's own rejections are neutral
(a 429 is the rate limiter's business).

With ``enforce: false`` (shadow mode) the state machine runs and logs exactly as
if enforcing, but a request it would reject passes (counted ``shadow_reject``) and
its outcome is not counted. Transitions happen lazily on ``admit``: no timers.
"""
from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from typing import Literal

from gateway.errors import LocalReply
from policies.resilience.config import CircuitBreakerConfig

State = Literal["closed", "half_open", "open"]
Outcome = Literal["success", "failure", "ignore"]
STATE_VALUE: dict[str, int] = {"closed": 0, "half_open": 1, "open": 2}
_BUCKETS = 10
_OPEN_JITTER = 0.2

# (breaker, from, to) -> None: logs the line and moves the gauges; must not raise.
ChangeListener = Callable[["CircuitBreaker", str, str], None]
# (breaker, decision) -> None: "allow" | "probe" | "reject" | "shadow_reject"
DecisionListener = Callable[["CircuitBreaker", str], None]
# (breaker, failed) -> None: an outcome counted while closed (the fleet's shared count: resilience.shared)
OutcomeListener = Callable[["CircuitBreaker", bool], None]


class CircuitOpen(LocalReply):
    """The breaker rejected the call; the retry policy fails over, else the client gets this 503."""

    def __init__(self, upstream: str, retry_after_s: float) -> None:
        seconds = max(1, math.ceil(retry_after_s))
        super().__init__(503, f"Upstream {upstream} is unavailable (circuit open); retry in {seconds}s.",
                         type="upstream_error", code="circuit_open", headers={"retry-after": str(seconds)})
        self.upstream = upstream


class Ticket:
    """One admitted call; ``settle`` it exactly once (later calls are ignored)."""

    __slots__ = ("breaker", "counted", "generation", "probe", "settled")

    def __init__(self, breaker: CircuitBreaker, generation: int, counted: bool, probe: bool) -> None:
        self.breaker, self.generation, self.counted, self.probe = breaker, generation, counted, probe
        self.settled = False

    def settle(self, outcome: Outcome) -> None:
        if not self.settled:
            self.settled = True
            if self.counted:
                self.breaker.record(self, outcome)


class CircuitBreaker:
    """The breaker of one upstream (or tool). ``state`` and ``since`` are read by /admin/stats."""

    def __init__(self, name: str, config: CircuitBreakerConfig, clock: Callable[[], float],
                 rand: Callable[[], float], on_change: ChangeListener | None = None,
                 on_decision: DecisionListener | None = None) -> None:
        self.name = name
        self.config = config
        self._clock = clock
        self._rand = rand
        self._on_change = on_change
        self._on_decision = on_decision
        self.on_outcome: OutcomeListener | None = None
        self.state: State = "closed"
        self.since = clock()
        self.open_until = 0.0
        self.openings = 0  # consecutive openings since the last close: grows the open time
        self.consecutive = 0
        self._generation = 0
        self._probes_admitted = 0
        self._probes_ok = 0
        self._window: deque[list[int]] = deque()  # [bucket id, calls, failures]
        self._calls = 0
        self._failures = 0

    # --- admission ---------------------------------------------------------------------------

    def admit(self) -> Ticket:
        """Admit one call or raise ``CircuitOpen`` (never raises in shadow mode)."""
        state = self.state
        if state == "closed":
            self._decide("allow")
            return Ticket(self, self._generation, True, False)
        if state == "open" and self._clock() >= self.open_until:
            self._transition("half_open")
            state = "half_open"
        if state == "half_open" and self._probe_slot_free():
            self._probes_admitted += 1
            self._decide("probe")
            return Ticket(self, self._generation, True, True)
        if not self.config.enforce:
            self._decide("shadow_reject")
            return Ticket(self, self._generation, False, False)
        self._decide("reject")
        raise CircuitOpen(self.name, self.retry_after_s())

    def rejecting(self) -> bool:
        """Would ``admit`` reject right now? (The retry policy asks before it waits to retry.)"""
        if not self.config.enforce or self.state == "closed":
            return False
        if self.state == "open":
            return self._clock() < self.open_until
        return not self._probe_slot_free()

    def _probe_slot_free(self) -> bool:
        """The first probe goes alone (a still-broken upstream costs one attempt per open
        interval, however many clients wait); after it succeeded, the rest go together."""
        admitted = self._probes_admitted
        return admitted == 0 or (self._probes_ok > 0 and admitted < self.config.half_open_probes)

    def retry_after_s(self) -> float:
        return max(1.0, self.open_until - self._clock()) if self.state == "open" else 1.0

    # --- outcomes ----------------------------------------------------------------------------

    def record(self, ticket: Ticket, outcome: Outcome) -> None:
        if ticket.generation != self._generation:
            return  # admitted under an earlier state: its outcome says nothing about this one
        if self.state == "half_open":
            self._record_probe(outcome)
        elif self.state == "closed" and outcome != "ignore":
            self._record_closed(outcome == "failure")

    def _record_probe(self, outcome: Outcome) -> None:
        if outcome == "ignore":
            self._probes_admitted = max(0, self._probes_admitted - 1)  # free the probe slot
        elif outcome == "failure":
            self._open()
        else:
            self._probes_ok += 1
            if self._probes_ok >= self.config.half_open_probes:
                self._transition("closed")

    def _record_closed(self, failed: bool) -> None:
        cfg = self.config
        if self.on_outcome is not None:
            self.on_outcome(self, failed)
        bucket = self._bucket()
        bucket[1] += 1
        self._calls += 1
        if not failed:
            self.consecutive = 0
            return
        bucket[2] += 1
        self._failures += 1
        self.consecutive += 1
        if self.consecutive >= cfg.consecutive_failures or (
                self._calls >= cfg.min_calls and self._failures >= cfg.failure_ratio * self._calls):
            self._open()

    # --- the fleet's word (policies.resilience.shared) -------------------------------------------
    def open_remote(self, until: float) -> None:
        """Another worker/replica opened this breaker until ``until`` (this clock): reject at once."""
        if self.state == "open" and self.open_until >= until:
            return
        self.openings += 1
        self.open_until = until
        self._transition("open")

    def trip(self) -> None:
        """The fleet's shared failure count reached the threshold: open here (and tell the others)."""
        if self.state == "closed":
            self._open()

    def close_remote(self) -> None:
        """Another worker/replica closed it (its probe succeeded): admit again."""
        if self.state != "closed":
            self._transition("closed")

    # --- transitions -------------------------------------------------------------------------

    def _open(self) -> None:
        cfg = self.config
        self.openings += 1
        cap = max(cfg.max_open_s, cfg.open_s)  # an open_s above the (default) cap just does not grow
        full = min(cap, cfg.open_s * (2 ** min(self.openings - 1, 30)))
        self.open_until = self._clock() + full * (1.0 - _OPEN_JITTER * self._rand())
        self._transition("open")

    def _transition(self, to: State) -> None:
        old = self.state
        self.state = to
        self.since = self._clock()
        self._generation += 1
        self._probes_admitted = self._probes_ok = 0
        if to == "closed":
            self.openings = 0
            self.consecutive = 0
            self._window.clear()
            self._calls = self._failures = 0
        if self._on_change is not None:
            self._on_change(self, old, to)

    def _decide(self, decision: str) -> None:
        if self._on_decision is not None:
            self._on_decision(self, decision)

    def _bucket(self) -> list[int]:
        width = self.config.window_s / _BUCKETS
        current = int(self._clock() // width) if width > 0 else 0
        window = self._window
        while window and window[0][0] <= current - _BUCKETS:
            _, calls, failures = window.popleft()
            self._calls -= calls
            self._failures -= failures
        if not window or window[-1][0] != current:
            window.append([current, 0, 0])
        return window[-1]
