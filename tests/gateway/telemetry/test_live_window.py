"""The live windows' building blocks: the log histogram and the mergeable one-second bucket."""
from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from gateway.telemetry import live_window as w
from gateway.telemetry.live_window import Hist, Second


def exact_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


@given(st.lists(st.floats(min_value=0.001, max_value=600.0), min_size=1, max_size=300),
       st.sampled_from([0.5, 0.9, 0.95, 0.99]))
def test_quantile_within_bin_width_of_exact(values: list[float], q: float) -> None:
    """Any percentile is within one bin (5 %) of the exact nearest-rank value."""
    h = Hist()
    for v in values:
        h.add(v)
    got, want = h.quantile(q), exact_rank(values, q)
    assert got is not None
    assert want / w.STEP <= got <= want * w.STEP


def test_empty_and_extreme_values() -> None:
    """An empty histogram has no percentile; zero and huge values are clamped into the end bins."""
    h = Hist()
    assert h.quantile(0.5) is None
    h.add(0.0)
    h.add(1e9)
    assert h.n == 2 and set(h.bins) == {0, w.MAX_BIN}
    assert h.quantile(0.01) == w.MIN_S


def test_merge_and_unmerge_restore_the_original() -> None:
    """Adding then subtracting a histogram leaves the first unchanged and drops emptied bins."""
    a, b = Hist(), Hist()
    for v in (0.01, 0.02, 0.03):
        a.add(v)
    for v in (0.02, 5.0):
        b.add(v)
    before = dict(a.bins)
    a.merge(b)
    assert a.n == 5
    a.merge(b, -1)
    assert a.bins == before and a.n == 3


def test_second_merge_is_reversible() -> None:
    """Window totals can add a second and later subtract it exactly: groups and hists disappear."""
    s = Second(5)
    s.g[w.REQ] = 2
    s.g[w.COST] = 0.1
    s.models["gpt-4o"] = [2, 1, 10, 20, 0, 0.1]
    s.tenants["alpha"] = [2, 1, 10, 20, 0, 0.1]
    s.cache["hit"] = 1
    s.hist(("ttft", "gpt-4o")).add(0.2)
    total = Second()
    total.merge(s)
    total.merge(s)
    assert total.g[w.REQ] == 4 and total.models["gpt-4o"][w.M_REQ] == 4
    assert total.hists[("ttft", "gpt-4o")].n == 2
    total.merge(s, -1)
    total.merge(s, -1)
    assert (
        total.g[w.REQ] == 0 and not total.models and not total.tenants and not total.cache and not total.hists
    )


def test_copy_is_independent() -> None:
    """A copy (the read view) never aliases the live totals."""
    s = Second(1)
    s.g[w.REQ] = 1
    s.models["m"] = [1, 0, 0, 0, 0, 0.0]
    s.hist("lat").add(0.1)
    c = s.copy()
    c.g[w.REQ] += 1
    c.models["m"][w.M_REQ] += 1
    c.hist("lat").add(0.2)
    assert s.g[w.REQ] == 1 and s.models["m"][w.M_REQ] == 1 and s.hists["lat"].n == 1
