"""A key with ``rpm: 6`` gets exactly 6 answers a minute across 2 workers and across 2 replicas."""
from __future__ import annotations

import openai

from tests.e2e.fleet import LIMITED, Fleet, Pinned, mock_total


async def status(pin: Pinned, i: int) -> int:
    try:
        await pin.client(LIMITED).chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": f"limits {i}"}], max_tokens=3)
    except openai.RateLimitError as err:
        assert err.code == "rate_limit_exceeded"
        return 429
    return 200


async def test_rpm_6_is_exact_across_processes(fleet: Fleet, pair: tuple[Pinned, Pinned]) -> None:
    """7 requests on process A, then 1 on process B: A answers 6 (a per-process share of 3 would answer
    only 3), the 7th and B's are refused (a per-process bucket would let B's through)."""
    a, b = pair
    before = await mock_total(fleet)
    on_a = [await status(a, i) for i in range(7)]
    on_b = [await status(b, 7)]
    assert on_a == [200] * 6 + [429]
    assert on_b == [429]
    assert await mock_total(fleet) - before == 6  # no more and no fewer reached the provider
