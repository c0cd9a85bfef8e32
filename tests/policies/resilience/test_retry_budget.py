"""The retry budget: at most budget_ratio of recent requests, never below the floor."""
from __future__ import annotations

from policies.resilience.config import RetryConfig
from policies.resilience.retry_budget import RetryBudget


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_ratio_caps_retries() -> None:
    """50 requests at ratio 0.2 allow exactly 10 retries."""
    clock = Clock()
    budget = RetryBudget(RetryConfig(budget_ratio=0.2, budget_floor=2), clock)
    for _ in range(50):
        budget.record_request()
    spent = sum(budget.try_spend() for _ in range(30))
    assert spent == 10 and budget.retries == 10


def test_floor_for_low_traffic() -> None:
    """With almost no traffic the floor still allows a few retries, and no more."""
    budget = RetryBudget(RetryConfig(budget_ratio=0.2, budget_floor=3), Clock())
    budget.record_request()
    assert [budget.try_spend() for _ in range(4)] == [True, True, True, False]


def test_window_slides() -> None:
    """Old requests and retries fall out of the window, so the budget refills."""
    clock = Clock()
    budget = RetryBudget(RetryConfig(budget_ratio=0.5, budget_floor=0), clock, window_s=10.0)
    for _ in range(4):
        budget.record_request()
    assert budget.try_spend() and budget.try_spend() and not budget.try_spend()
    clock.now += 10.5
    assert budget.requests == 0 and budget.retries == 0
    assert not budget.try_spend()  # nothing recent to retry against, floor 0
    budget.record_request()
    budget.record_request()
    assert budget.try_spend()


def test_configure_updates_in_place() -> None:
    """A reload changes ratio and floor without forgetting the window."""
    budget = RetryBudget(RetryConfig(budget_ratio=0.0, budget_floor=0), Clock())
    budget.record_request()
    assert not budget.try_spend()
    budget.configure(RetryConfig(budget_ratio=1.0, budget_floor=0))
    assert budget.try_spend() and budget.requests == 1
