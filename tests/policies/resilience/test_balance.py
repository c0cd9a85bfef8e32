"""Choosing a deployment: power of two choices on in-flight x latency, open breakers last, affinity."""
from __future__ import annotations

from collections import Counter
from itertools import cycle

from policies.resilience.balance import Deployment, Load, order, prompt_prefix

THREE = (Deployment("a", 1.0), Deployment("b", 1.0), Deployment("c", 1.0))


def loads(**figures: tuple[int, float]) -> dict[str, Load]:
    out = {k: Load() for k in "abc"}
    for key, (in_flight, ewma) in figures.items():
        out[key] = Load(in_flight=in_flight, ewma_s=ewma)
    return out


def test_of_the_two_picked_the_less_busy_wins() -> None:
    figures = loads(a=(5, 0.2), b=(0, 0.2), c=(9, 0.2))
    rand = cycle([0.1, 0.1]).__next__  # picks a, then b (a excluded)
    assert order(THREE, figures.__getitem__, lambda k: True, rand) == [1, 0, 2]


def test_latency_counts_as_much_as_load() -> None:
    figures = loads(a=(0, 2.0), b=(1, 0.2))  # a idle but slow: (0+1) x 2.0 > (1+1) x 0.2
    rand = cycle([0.1, 0.1]).__next__
    assert order(THREE, figures.__getitem__, lambda k: True, rand)[0] == 1


def test_open_breakers_go_last_and_are_never_picked_first() -> None:
    figures = loads()
    for r in (0.0, 0.5, 0.99):
        got = order(THREE, figures.__getitem__, lambda k: k != "a", lambda r=r: r)
        assert got[0] != 0 and got[-1] == 0
    assert order(THREE, figures.__getitem__, lambda k: False) == [0, 1, 2]  # all open: keep the order


def test_weights_shape_the_first_pick_of_idle_deployments() -> None:
    weighted = (Deployment("a", 3.0), Deployment("b", 1.0))
    figures = loads()
    picks = Counter(order(weighted, figures.__getitem__, lambda k: True, lambda r=i / 100: r)[0]
                    for i in range(100))
    assert picks == {0: 75, 1: 25}  # idle and equal: the first draw (by weight) wins the tie
    busy = loads(a=(3, 0.1))
    picks = Counter(order(weighted, busy.__getitem__, lambda k: True, lambda r=i / 100: r)[0]
                    for i in range(100))
    assert picks[1] == 100  # ... until it is busier


def test_affinity_keeps_a_prefix_on_one_deployment_and_spreads_prefixes() -> None:
    figures = loads(a=(50, 1.0))  # load does not move an affine request
    firsts = {p: order(THREE, figures.__getitem__, lambda k: True, prefix=p)[0] for p in
              (f"system prompt {n}" for n in range(60))}
    assert all(order(THREE, figures.__getitem__, lambda k: True, prefix=p)[0] == f for p, f in firsts.items())
    assert set(firsts.values()) == {0, 1, 2}
    sticky = next(p for p, f in firsts.items() if f == 0)
    assert order(THREE, figures.__getitem__, lambda k: k != "a", prefix=sticky)[0] != 0  # unless it is open


def test_load_ewma_and_in_flight() -> None:
    load = Load()
    load.observe(1.0)
    load.observe(2.0)
    assert abs(load.ewma_s - 1.3) < 1e-9
    load.begin()
    load.end()
    load.end()
    assert load.in_flight == 0


def test_prompt_prefix() -> None:
    body = {"messages": [{"role": "system", "content": "x" * 3000}, {"role": "user", "content": "hi"}]}
    assert prompt_prefix(body) == "x" * 2048 and prompt_prefix(None) == ""
    assert prompt_prefix({"input": "hello"}) == "hello"
