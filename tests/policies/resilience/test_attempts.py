"""One target's retry decisions (``TargetAttempts.retry_delay``), each stop counted with its reason.

The attempts themselves (send, commit point, retries end to end) run through the retry layer in
``test_retry_layer.py``; here each branch of the decision "wait this long and try the same target
again, or stop" is pinned on its own, with the retry that does happen as the control.
"""
from __future__ import annotations

import dataclasses

import pytest

from policies.resilience.attempts import Failed
from tests.policies.resilience.test_retry_layer import Harness


def decide(h: Harness, failed: Failed, tries: int = 1, deadline_in: float = 600.0) -> float | None:
    ex = h.exchange()
    ex = dataclasses.replace(ex, request=ex.request._replace(deadline=h.clock.now + deadline_in))
    target = h.policy.planner(ex)[0]
    return h.policy.attempts.retry_delay(ex, target, failed, tries, h.res.budget(target.key))


@pytest.mark.parametrize(("failed", "tries", "deadline_in", "retry", "expected", "why"), [
    (Failed("503"), 1, 600.0, {}, 0.05, None),  # the control: retried after the backoff (0.5 x 0.1 s)
    (Failed("500"), 1, 600.0, {"retry_on": ["503"]}, None, "not_retryable"),
    (Failed("503"), 3, 600.0, {}, None, "attempts_spent"),
    (Failed("429", retry_after=120.0), 1, 600.0, {}, None, "retry_after_too_long"),  # > max_retry_after_s
    (Failed("429", retry_after=2.0), 1, 600.0, {}, 2.0, None),  # waited for: longer than the backoff
    (Failed("429", retry_after=2.0), 1, 1.5, {}, None, "retry_after_too_long"),  # past the deadline
    (Failed("503"), 1, 0.01, {}, None, "deadline"),
])
def test_retry_delay(failed: Failed, tries: int, deadline_in: float, retry: dict[str, object],
                     expected: float | None, why: str | None) -> None:
    h = Harness(retry=retry)
    assert decide(h, failed, tries, deadline_in) == expected
    stops = {w: h.sample("gateway_policy_decisions_total", policy="retry", decision=w)
             for w in ("not_retryable", "attempts_spent", "retry_after_too_long", "deadline")}
    assert stops == {w: (1.0 if w == why else 0.0) for w in stops}


def test_an_empty_budget_stops_retrying_and_says_so() -> None:
    h = Harness(retry={"budget_floor": 1, "budget_ratio": 0.0})
    assert decide(h, Failed("503")) == 0.05  # the floor's one retry: the control
    assert decide(h, Failed("503")) is None
    assert h.sample("gateway_policy_decisions_total", policy="retry", decision="budget_exhausted") == 1
    assert h.sample("gateway_retry_budget_exhausted_total", upstream="a") == 1
