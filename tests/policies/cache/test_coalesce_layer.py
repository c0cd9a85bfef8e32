"""The coalesce policy: identical deterministic requests share one call; others and bypassers do not."""
from __future__ import annotations

import asyncio

import orjson

from gateway.exchange import Exchange, UpstreamResponse
from policies.cache.coalesce_layer import factory
from tests.policies.cache.support import ANSWER, body_of, drain, exchange, make_state


class Gated:
    def __init__(self) -> None:
        self.calls = 0
        self.gate = asyncio.Event()

    async def __call__(self, ex: Exchange) -> UpstreamResponse:
        self.calls += 1
        await self.gate.wait()
        return UpstreamResponse(200, {"content-type": "application/json"}, body_of([orjson.dumps(ANSWER)]))


async def run(st, policy, up: Gated, n: int, **kw) -> list[Exchange]:  # type: ignore[no-untyped-def]
    exs = [exchange(st, **kw) for _ in range(n)]
    tasks = [asyncio.create_task(policy(ex, up)) for ex in exs]
    await asyncio.sleep(0)
    up.gate.set()
    for resp in await asyncio.gather(*tasks):
        assert orjson.loads(await drain(resp)) == ANSWER
    return exs


async def test_shares_one_call() -> None:
    """Five identical requests: one call, four marked coalesced."""
    st = make_state()
    up = Gated()
    exs = await run(st, await factory(st, st.config), up, 5)
    assert up.calls == 1
    assert sorted(ex.record.cache_result for ex in exs) == ["coalesced"] * 4 + ["none"]


async def test_bypass_and_nondeterministic_are_not_coalesced() -> None:
    """A client asking to skip the cache, or a non-deterministic request, goes upstream on its own."""
    st = make_state()
    policy = await factory(st, st.config)
    up = Gated()
    await run(st, policy, up, 3, headers={"x-gateway-cache": "bypass"})
    up2 = Gated()
    await run(st, policy, up2, 3, body={"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]})
    assert (up.calls, up2.calls) == (3, 3)
