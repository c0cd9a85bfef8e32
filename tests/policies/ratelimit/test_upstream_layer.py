"""The upstream rate limit policy: queue instead of 429, bounded by time, learning the provider's quota."""
from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.appstate import AppState
from gateway.errors import LocalReply
from gateway.exchange import Exchange
from policies.ratelimit.runtime import COMPONENT, RateLimiter
from policies.ratelimit.upstream_layer import UpstreamRateLimit, factory
from tests.policies.ratelimit.test_client_layer import (
    SSE,
    answering,
    drain,
    exchange,
    freeze,
    make_state,
    sample,
    sse_chunks,
    usage_body,
)
from tests.support.until import until


async def policy_for(**rate_limit: Any) -> tuple[UpstreamRateLimit, AppState]:
    st = make_state(upstreams={"mock": {"base_url": "http://127.0.0.1:9/v1", "rate_limit": rate_limit}})
    policy = await factory(st, st.config)
    assert policy is not None
    return policy, st


def limiter_of(st: AppState) -> RateLimiter:
    return st.components[COMPONENT]


async def test_waits_in_the_queue_until_a_slot_frees() -> None:
    """Over max_concurrency a request queues (counted, added to waited_s) and goes when the stream ends."""
    policy, st = await policy_for(max_concurrency=1, headroom=1.0)
    nxt = answering(sse_chunks(2), headers=SSE)
    first = await policy(exchange(st), nxt)
    ex = exchange(st)
    second = asyncio.create_task(policy(ex, nxt))
    await until(lambda: limiter_of(st).queues["mock"].depth == 1, timeout=5.0, interval=0.001)
    assert sample(st, "gateway_rate_limit_queue_depth", upstream="mock") == 1
    assert not second.done()
    await drain(first)
    await drain(await second)
    assert ex.record.waited_s > 0
    assert sample(st, "gateway_rate_limit_decisions_total", scope="upstream", limit="concurrency",
                  decision="queued") == 1
    assert sample(st, "gateway_policy_decisions_total", policy="rate_limit_upstream", decision="queued") == 1
    assert sample(st, "gateway_rate_limit_wait_seconds_count", upstream="mock") == 2
    assert sample(st, "gateway_rate_limit_queue_depth", upstream="mock") == 0


async def test_gives_up_after_max_queue_wait_and_never_past_the_deadline() -> None:
    """A queued request gets 429 + Retry-After at max_queue_wait_s, or sooner at its own deadline."""
    policy, st = await policy_for(max_concurrency=1, max_queue_wait_s=0.1)
    nxt = answering([usage_body(1, 1)])
    held = await policy(exchange(st), nxt)
    ex = exchange(st)
    with pytest.raises(LocalReply) as info:
        await policy(ex, nxt)
    assert info.value.status == 429 and info.value.headers["retry-after"] == "1"
    assert 0.09 <= ex.record.waited_s < 1.0
    hurried = exchange(st)
    hurried.request = hurried.request._replace(deadline=st.clock() + 0.02)
    with pytest.raises(LocalReply):
        await policy(hurried, nxt)
    assert hurried.record.waited_s < 0.09
    assert sample(st, "gateway_rate_limit_decisions_total", scope="upstream", limit="concurrency",
                  decision="rejected") == 2
    await drain(held)


async def test_provider_429_pauses_the_upstream() -> None:
    """A provider 429 with Retry-After pauses the upstream: the next request is refused at once, not sent."""
    policy, st = await policy_for(rpm=1000, max_queue_wait_s=0.5)
    freeze(st)
    await drain(await policy(exchange(st), answering([b"{}"], headers={"retry-after": "2"}, status=429)))
    nxt = answering([usage_body(1, 1)])
    ex = exchange(st)
    with pytest.raises(LocalReply) as info:
        await policy(ex, nxt)
    assert info.value.headers["retry-after"] == "2" and "paused by its provider" in info.value.message
    assert not nxt.calls and ex.record.waited_s < 0.1  # type: ignore[attr-defined]


async def test_remaining_headers_shrink_the_bucket() -> None:
    """x-ratelimit-remaining-requests lowers the local bucket to the provider's view."""
    policy, st = await policy_for(rpm=1000, tpm=1_000_000)
    freeze(st)
    headers = {"content-type": "application/json", "x-ratelimit-remaining-requests": "3",
               "x-ratelimit-remaining-tokens": "500", "x-ratelimit-reset-requests": "1s"}
    resp = await policy(exchange(st), answering([usage_body(1, 1)], headers=headers))
    ls = policy.sets["mock"][0]
    assert limiter_of(st).memory.level(ls, "rpm") == 3
    assert limiter_of(st).memory.level(ls, "tpm") == 500
    await drain(resp)  # then the unused part of the reservation comes back
    assert 500 < limiter_of(st).memory.level(ls, "tpm") < 600


async def test_shadow_mode_never_queues_or_refuses() -> None:
    """enforce: false lets everything through at once and counts what it would have refused."""
    policy, st = await policy_for(rpm=1, enforce=False)
    freeze(st)
    nxt = answering([usage_body(1, 1)])
    for _ in range(3):
        ex = exchange(st)
        await drain(await policy(ex, nxt))
        assert ex.record.waited_s == 0
    assert len(nxt.calls) == 3  # type: ignore[attr-defined]
    assert sample(st, "gateway_rate_limit_decisions_total", scope="upstream", limit="rpm",
                  decision="shadow_rejected") == 2


async def test_each_attempt_is_admitted_but_tokens_counted_once() -> None:
    """A retried exchange takes a request per attempt; gateway_tokens_reserved_total counts the request
    once."""
    policy, st = await policy_for(rpm=100, tpm=100_000, headroom=1.0)
    freeze(st)
    ex = exchange(st)
    for _ in range(2):
        await drain(await policy(ex, answering([b'{"error":{}}'], status=503)))
    ls = policy.sets["mock"][0]
    assert limiter_of(st).memory.level(ls, "rpm") == 98
    assert limiter_of(st).memory.level(ls, "tpm") == 100_000  # error answers cost no tokens
    assert sample(st, "gateway_tokens_reserved_total") == ex.record.prompt_tokens + 50


async def test_headroom_too_large_and_queue_full() -> None:
    """Limits apply at headroom x quota; a request bigger than the bucket or a full queue is refused at
    once."""
    policy, st = await policy_for(rpm=10, tpm=200, headroom=0.5, max_queue=0, max_queue_wait_s=60)
    freeze(st)
    nxt = answering([usage_body(1, 1)])
    for _ in range(5):
        await drain(await policy(exchange(st), nxt))
    with pytest.raises(LocalReply) as info:
        await policy(exchange(st), nxt)
    assert info.value.status == 429 and "queue is full" in info.value.message
    big = exchange(st, {"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}], "max_tokens": 500})
    with pytest.raises(LocalReply) as info:
        await policy(big, nxt)
    assert "Request too large" in info.value.message and "limit 100" in info.value.message


async def test_high_priority_goes_first() -> None:
    """x-gateway-priority: high is admitted before normal requests that queued earlier."""
    policy, st = await policy_for(max_concurrency=1)
    nxt = answering(sse_chunks(1), headers=SSE)
    held = await policy(exchange(st), nxt)
    order: list[str] = []

    async def one(name: str, priority: str) -> None:
        ex: Exchange = exchange(st, headers={"x-gateway-priority": priority})
        resp = await policy(ex, nxt)
        order.append(name)
        await drain(resp)

    normal = asyncio.create_task(one("normal", "normal"))
    await until(lambda: limiter_of(st).queues["mock"].depth == 1, timeout=5.0, interval=0.001)
    high = asyncio.create_task(one("high", "HIGH"))
    await until(lambda: limiter_of(st).queues["mock"].depth == 2, timeout=5.0, interval=0.001)
    await drain(held)
    await asyncio.gather(normal, high)
    assert order == ["high", "normal"]
