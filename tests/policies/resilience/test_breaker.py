"""The breaker state machine, on an injected clock: no sleeps."""
from __future__ import annotations

import pytest

from policies.resilience.breaker import CircuitBreaker, CircuitOpen
from policies.resilience.config import CircuitBreakerConfig


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(clock: Clock, rand: float = 0.0, **cfg: object) -> tuple[CircuitBreaker, list[tuple[str, str]]]:
    changes: list[tuple[str, str]] = []
    base = {"consecutive_failures": 3, "min_calls": 1000, "open_s": 10.0, "max_open_s": 35.0,
            "half_open_probes": 2, **cfg}
    breaker = CircuitBreaker("up", CircuitBreakerConfig(**base), clock, lambda: rand,  # type: ignore[arg-type]
                             on_change=lambda b, old, new: changes.append((old, new)))
    return breaker, changes


def fail(breaker: CircuitBreaker, n: int = 1) -> None:
    for _ in range(n):
        breaker.admit().settle("failure")


def test_consecutive_failures_open_and_success_resets() -> None:
    """N failures in a row open the breaker; a success in between resets the count."""
    clock = Clock()
    breaker, changes = make(clock)
    fail(breaker, 2)
    breaker.admit().settle("success")
    fail(breaker, 2)
    assert breaker.state == "closed"
    fail(breaker)
    assert breaker.state == "open" and changes == [("closed", "open")] and breaker.since == clock.now
    with pytest.raises(CircuitOpen) as exc:
        breaker.admit()
    assert exc.value.status == 503 and exc.value.headers["retry-after"] == "10"


def test_neutral_outcomes_do_not_count() -> None:
    """ignore (4xx/429/our own rejections) neither breaks nor resets the failure streak."""
    breaker, _ = make(Clock())
    fail(breaker, 2)
    for _ in range(10):
        breaker.admit().settle("ignore")
    fail(breaker)
    assert breaker.state == "open"


def test_failure_ratio_over_min_calls_in_window() -> None:
    """The ratio trips only with min_calls in the window; old calls slide out."""
    clock = Clock()
    breaker, _ = make(clock, consecutive_failures=100, min_calls=10, failure_ratio=0.5, window_s=10.0)
    for _ in range(4):
        breaker.admit().settle("success")
        fail(breaker)
    assert breaker.state == "closed"  # 8 calls < min_calls
    clock.now += 11  # everything so far leaves the window
    for _ in range(5):
        breaker.admit().settle("success")
    fail(breaker, 4)
    assert breaker.state == "closed"  # 4/9, below min_calls
    fail(breaker)
    assert breaker.state == "open"  # 5/10 failed


def test_half_open_probes_close_after_successes() -> None:
    """After open_s one probe goes alone; once it succeeded the others go; N successes close the breaker."""
    clock = Clock()
    breaker, changes = make(clock, half_open_probes=3)
    fail(breaker, 3)
    clock.now += 9.99
    assert breaker.rejecting()
    clock.now += 0.02
    first = breaker.admit()
    assert breaker.state == "half_open" and first.probe and breaker.rejecting()
    with pytest.raises(CircuitOpen):
        breaker.admit()  # the first probe goes alone
    first.settle("success")
    second, third = breaker.admit(), breaker.admit()
    with pytest.raises(CircuitOpen):
        breaker.admit()  # three probes in all
    second.settle("success")
    assert breaker.state == "half_open"
    third.settle("success")
    assert breaker.state == "closed"
    assert changes == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]


def test_probe_failure_reopens_longer_up_to_max() -> None:
    """Each consecutive opening doubles open_s, capped by max_open_s; closing resets it."""
    clock = Clock()
    breaker, _ = make(clock)
    fail(breaker, 3)
    durations = []
    for _ in range(4):
        durations.append(breaker.open_until - clock.now)
        clock.now = breaker.open_until
        fail(breaker)  # the probe fails
    assert durations == [10.0, 20.0, 35.0, 35.0]
    clock.now = breaker.open_until
    breaker.admit().settle("success")
    breaker.admit().settle("success")
    assert breaker.state == "closed" and breaker.openings == 0
    fail(breaker, 3)
    assert breaker.open_until - clock.now == 10.0


def test_open_jitter_shortens_by_at_most_a_fifth() -> None:
    """Jitter keeps replicas from probing in lock-step: open time in (0.8, 1.0] x nominal."""
    clock = Clock()
    breaker, _ = make(clock, rand=1.0)
    fail(breaker, 3)
    assert breaker.open_until - clock.now == pytest.approx(8.0)


def test_ignored_probe_frees_its_slot_and_stale_tickets_are_dropped() -> None:
    """A cancelled probe frees its slot; a ticket from before a transition changes nothing."""
    clock = Clock()
    breaker, _ = make(clock, half_open_probes=1)
    stale = breaker.admit()
    fail(breaker, 3)
    clock.now = breaker.open_until
    probe = breaker.admit()
    probe.settle("ignore")
    again = breaker.admit()
    stale.settle("failure")  # admitted while closed: says nothing about the half-open state
    assert breaker.state == "half_open"
    again.settle("success")
    assert breaker.state == "closed"


def test_shadow_mode_never_rejects_but_tracks_state() -> None:
    """enforce: false runs the state machine and counts shadow rejections but lets calls through."""
    clock = Clock()
    decisions: list[str] = []
    cfg = CircuitBreakerConfig(consecutive_failures=2, enforce=False, half_open_probes=1)
    breaker = CircuitBreaker("up", cfg, clock, lambda: 0.0, on_decision=lambda b, d: decisions.append(d))
    fail(breaker, 2)
    assert breaker.state == "open" and not breaker.rejecting()
    passed = breaker.admit()
    assert not passed.counted
    passed.settle("success")  # uncounted: does not close it
    assert breaker.state == "open"
    assert decisions == ["allow", "allow", "shadow_reject"]


def _outage(config: CircuitBreakerConfig, recovered_at: float, rand: float) -> list[float]:
    """The issue's scenario on a fake clock: a request every 4 s for 80 s, each trying the primary up to
    3 times while admitted (else it goes to the fallback); the primary fails until ``recovered_at``.
    Returns the times at which the primary answered."""
    clock = Clock()
    start = clock.now
    breaker = CircuitBreaker("up", config, clock, lambda: rand)
    served: list[float] = []
    for i in range(20):
        clock.now = start + 4.0 * i
        for _ in range(3):
            try:
                ticket = breaker.admit()
            except CircuitOpen:
                break  # the fallback answers this one
            ok = clock.now - start >= recovered_at
            ticket.settle("success" if ok else "failure")
            if ok:
                served.append(clock.now - start)
                break
    return served


@pytest.mark.parametrize("rand", [0.0, 0.5, 0.999])
def test_defaults_give_a_recovered_primary_traffic_within_10s(rand: float) -> None:
    """With default settings, a primary down for ~60 s gets traffic again within 10 s of recovering,
    wherever the recovery falls between two requests and whatever the jitter."""
    for tenth in range(560, 650, 3):
        recovered = tenth / 10
        served = _outage(CircuitBreakerConfig(), recovered, rand)
        assert served and served[0] - recovered <= 10.0, (recovered, served[:1])


def test_unbounded_growth_is_what_starved_recovery() -> None:
    """Control: the old defaults (open 30 s doubling to 300 s) send no request to the recovered primary."""
    assert _outage(CircuitBreakerConfig(open_s=30.0, max_open_s=300.0), 60.0, 0.5) == []


def test_open_s_above_max_open_s_does_not_grow() -> None:
    """An operator's open_s: 30 with the short default cap keeps 30 s (it neither grows nor shrinks)."""
    clock = Clock()
    breaker, _ = make(clock, open_s=30.0, max_open_s=6.0)
    fail(breaker, 3)
    assert breaker.open_until == clock.now + 30.0
    clock.now = breaker.open_until
    fail(breaker)  # the probe fails: opens again, same interval
    assert breaker.open_until == clock.now + 30.0
