"""10 identical concurrent deterministic requests spread over 2 workers (and 2 replicas): 1 upstream call."""
from __future__ import annotations

import asyncio
import secrets

from openai import AsyncOpenAI

from tests.e2e.fleet import FREE, Fleet, Pinned, mock_faults, mock_total, pinned_http


async def ask(client: AsyncOpenAI, prompt: str, deterministic: bool) -> tuple[str, str]:
    extra = {"temperature": 0} if deterministic else {}
    raw = await client.chat.completions.with_raw_response.create(
        model="coalesce-e2e", messages=[{"role": "user", "content": prompt}], **extra)  # no max_tokens:
    # an answer cut by max_tokens is not cached, so it could not be shared through the cache
    reply = raw.parse()
    return str(reply.choices[0].message.content), raw.headers.get("x-gateway-cache", "")


async def spread(fleet: Fleet, pair: tuple[Pinned, Pinned], n: int, prompt: str,
                 deterministic: bool) -> list[tuple[str, str]]:
    """One request on each pinned process, the rest on fresh connections over every URL, all at once."""
    extra = [Pinned(fleet.urls[i % len(fleet.urls)], pinned_http()) for i in range(n - 2)]
    try:
        clients = [pin.client(FREE) for pin in (*pair, *extra)]
        return list(await asyncio.gather(*(ask(c, prompt, deterministic) for c in clients)))
    finally:
        for pin in extra:
            await pin.http.aclose()


async def test_identical_requests_across_processes_make_one_call(fleet: Fleet,
                                                                 pair: tuple[Pinned, Pinned]) -> None:
    prompt = f"coalesce {secrets.token_hex(4)}"
    # the first call to reach the provider is slow, so all 10 requests are in flight together
    await mock_faults(fleet, [{"fault": "stall_before_first_byte_ms=800", "times": 1,
                               "match": {"model": "coalesce-e2e"}}])
    before = await mock_total(fleet)
    answers = await spread(fleet, pair, 10, prompt, deterministic=True)
    assert await mock_total(fleet) - before == 1
    assert len({text for text, _ in answers}) == 1
    results = sorted(cache for _, cache in answers)
    assert results.count("miss") == 1 and set(results) <= {"miss", "coalesced", "hit"}
    assert "coalesced" in results


async def test_control_non_deterministic_requests_each_reach_the_provider(
        fleet: Fleet, pair: tuple[Pinned, Pinned]) -> None:
    before = await mock_total(fleet)
    await spread(fleet, pair, 4, f"control {secrets.token_hex(4)}", deterministic=False)
    assert await mock_total(fleet) - before == 4
