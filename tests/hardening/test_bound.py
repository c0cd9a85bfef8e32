"""The issue-15 bound's arithmetic on made-up bystander calls (the live check is ``test_bounded_work``)."""
from __future__ import annotations

import pytest

from tests.hardening.bound import Verdict, judge
from tests.hardening.bystander import Span, Watch


def calls(start: float, end: float, latency: float, every: float = 0.01) -> list[Span]:
    """Back-to-back calls of ``latency`` seconds, one starting every ``every`` seconds."""
    out, at = [], start
    while at < end:
        out.append((at, at + latency))
        at += every
    return out


def test_a_call_overlapping_a_round_is_never_baseline() -> None:
    # A round at 1.0-1.5 s, its no-attack window at 2.0-2.5 s; one slow call straddles the round's end.
    slow = (1.45, 2.1)
    watch = Watch(chats=[*calls(1.0, 1.4, 0.005), slow, *calls(2.11, 2.5, 0.005)],
                  healthz=[(1.2, 1.21), (2.2, 2.201)])
    verdict = judge(watch, [(1.0, 1.5)], [(2.0, 2.5)])
    assert verdict.p99 == slow[1] - slow[0]
    assert verdict.baseline_p99 == pytest.approx(0.005)
    assert verdict.baseline_n == len(calls(2.11, 2.5, 0.005))
    assert (verdict.healthz_max, verdict.baseline_healthz_max) == pytest.approx((0.01, 0.001))


def test_calls_outside_both_windows_count_for_neither() -> None:
    watch = Watch(chats=[(0.0, 0.5), *calls(1.0, 1.5, 0.004), (1.6, 1.9), *calls(2.0, 2.5, 0.003)])
    verdict = judge(watch, [(1.0, 1.5)], [(2.0, 2.5)])
    assert (verdict.p99, verdict.baseline_p99) == pytest.approx((0.004, 0.003))


def verdict(p99: float, baseline_p99: float, healthz_max: float = 0.01) -> Verdict:
    return Verdict(p99=p99, n=500, healthz_max=healthz_max, baseline_p99=baseline_p99, baseline_n=500,
                   baseline_healthz_max=0.01)


def test_the_bound_is_the_issues() -> None:
    assert verdict(0.030, 0.005).over() == []  # 30 ms against 2 x 5 + 20 = 30 ms: within
    assert verdict(0.0301, 0.005).over() == ["p99"]
    assert verdict(0.0301, 0.005).over(slack_s=0.1) == []
    assert verdict(0.0301, 0.005, healthz_max=0.15).over(healthz_slack_s=0.1) == ["p99"]
    assert verdict(0.010, 0.005, healthz_max=0.1).over() == []
    assert verdict(0.010, 0.005, healthz_max=0.101).over() == ["healthz"]
    assert verdict(0.2, 0.005, healthz_max=0.2).over() == ["p99", "healthz"]
