"""A breaker counts failures across workers/replicas, then every process answers at once; it recovers
everywhere."""
from __future__ import annotations

import openai

from tests.e2e.fleet import Fleet, Pinned, mock_faults, mock_total
from tests.support.until import until


async def outcome(pin: Pinned) -> str:
    """``ok``, the HTTP status of an upstream failure, or the error code of a local refusal."""
    try:
        await pin.client().chat.completions.create(
            model="flaky", messages=[{"role": "user", "content": "breaker"}], max_tokens=3)
    except openai.APIStatusError as err:
        return str(err.code) if err.code == "circuit_open" else str(err.status_code)
    return "ok"


async def breaker_state(pin: Pinned) -> str:
    rows = (await pin.stats())["breakers"]
    return next(str(r["state"]) for r in rows if r["upstream"] == "flaky")


async def test_failures_count_across_processes_and_open_everywhere(fleet: Fleet,
                                                                   pair: tuple[Pinned, Pinned]) -> None:
    a, b = pair
    await mock_faults(fleet, [{"fault": "status=500", "times": 4, "match": {"model": "flaky"}}])
    before = await mock_total(fleet)
    assert [await outcome(a), await outcome(a), await outcome(b)] == ["500"] * 3
    # control: 3 failures in the fleet (at most 2 per process) open nothing
    assert await breaker_state(a) == await breaker_state(b) == "closed"
    assert await outcome(b) == "500"  # the 4th failure in the fleet, only B's 2nd

    async def both_open() -> bool:
        return await breaker_state(a) == "open" and await breaker_state(b) == "open"

    await until(both_open, timeout=10, interval=0.05, message="the breaker opens on both processes")
    assert [await outcome(a), await outcome(b)] == ["circuit_open"] * 2  # answered at once
    assert await mock_total(fleet) - before == 4  # ...without reaching the provider

    # Recovery: after open_s a probe gets through on B and closes it; A learns it without a probe.
    async def b_recovers() -> bool:
        return await outcome(b) == "ok"

    await until(b_recovers, timeout=10, interval=0.1, message="B's probe succeeds")

    async def a_closed() -> bool:
        return await breaker_state(a) == "closed"

    await until(a_closed, timeout=10, interval=0.05, message="A hears that the breaker closed")
    assert await outcome(a) == "ok"
