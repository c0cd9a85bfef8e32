"""The exact cache policy: stores clean answers, serves them in both modes, respects modes and tenants."""
from __future__ import annotations

import secrets
import time
import zlib

import orjson

from gateway.appstate import AppState
from gateway.exchange import Exchange, UpstreamResponse
from gateway.state.redis_client import GuardedRedis
from policies.cache.canonical import answer_from_sse
from policies.cache.exact_layer import factory
from policies.cache.fleet_flight import PRE_CLAIM
from policies.cache.redis_store import Claim
from policies.cache.request import KEY_ATTR
from tests.policies.cache.support import ANSWER, Upstream, body_of, drain, exchange, make_state
from tests.support.servers import RedisServer


async def test_miss_then_hit_in_both_modes() -> None:
    """The second identical request is served from the store, as JSON or as SSE, with usage and headers."""
    st = make_state()
    policy = await factory(st, st.config)
    up = Upstream()
    first = exchange(st)
    assert orjson.loads(await drain(await policy(first, up))) == ANSWER
    hit = exchange(st)
    resp = await policy(hit, up)
    assert (
        resp.source == "cache" and hit.record.cache_result == "hit" and hit.record.reported_usage.total == 5
    )
    assert orjson.loads(await drain(resp)) == ANSWER
    assert hit.response_headers["x-gateway-cache-tokens-saved"] == "5"
    streamed = exchange(st, {**first.body, "stream": True})
    sse = await drain(await policy(streamed, up))
    assert sse.endswith(b"data: [DONE]\n\n") and b'"content":"hi there"' in sse
    assert up.calls == 1


async def test_a_bypassed_request_gets_no_key() -> None:
    """A non-deterministic request is bypassed before its key is made (an agent's 500 KB prompt would
    pay a canonical dump holding the GIL for nothing); a deterministic one (the control) gets its key."""
    st = make_state()
    policy = await factory(st, st.config)
    up = Upstream()
    chat = [{"role": "user", "content": "hi"}]
    sampled = exchange(st, {"model": "gpt-4o", "messages": chat, "temperature": 1})
    await drain(await policy(sampled, up))
    assert sampled.record.cache_result == "bypass" and sampled.state.get(KEY_ATTR) is None
    fixed = exchange(st)
    await drain(await policy(fixed, up))
    assert fixed.record.cache_result == "miss" and fixed.state.get(KEY_ATTR) is not None


async def test_modes_and_shadowing() -> None:
    """mode read_only never writes; mode off does nothing at all (the layer is not even built)."""
    for mode, header in (("read_only", "miss"),):
        st = make_state(cache={"exact": {"mode": mode}})
        policy = await factory(st, st.config)
        assert policy is not None
        up = Upstream()
        for _ in range(2):
            ex = exchange(st)
            await drain(await policy(ex, up))
            assert ex.response_headers.get("x-gateway-cache") == header
        assert up.calls == 2
    st = make_state(cache={"exact": {"mode": "off"}})
    assert await factory(st, st.config) is None


async def test_built_when_only_a_route_enables_it() -> None:
    route = {"match": {"model": "*"}, "upstream": "mock", "cache": {"exact": {"enabled": True}}}
    st = make_state(cache={"exact": {"enabled": False}}, routes=[route])
    assert await factory(st, st.config) is not None
    st = make_state(cache={"exact": {"enabled": False}})
    assert await factory(st, st.config) is None


async def test_errors_and_tenants() -> None:
    """Non-200 answers are never stored; another tenant's identical request misses."""
    st = make_state(auth={"mode": "keys", "keys": [{"key": "ka", "tenant": "a"},
                                                   {"key": "kb", "tenant": "b"}]})
    policy = await factory(st, st.config)
    bad = Upstream({"error": {"message": "no"}}, status=500)
    await drain(await policy(exchange(st, key="ka"), bad))
    good = Upstream()
    await drain(await policy(exchange(st, key="ka"), good))
    other = exchange(st, key="kb")
    await drain(await policy(other, good))
    assert other.record.cache_result == "miss" and good.calls == 2
    counted = st.metrics.registry.get_sample_value("gateway_cache_requests_total",
                                                   {"kind": "exact", "result": "miss"})
    assert counted == 3


async def test_a_miss_takes_the_fleet_claim_and_gives_it_back_when_unused(redis_server: RedisServer) -> None:
    """With a shared backend, the lookup of a cacheable miss also claims the key for fleet coalescing.
    A request that never reaches single flight (here next() answers itself, as a semantic hit would)
    gives the claim back at once; one that single flight took over keeps it for the flight's leader."""
    st = make_state(state={"backend": "redis", "redis_url": redis_server.url,
                           "key_prefix": f"x{secrets.token_hex(3)}:"})
    st.backend = GuardedRedis.from_config(st.config.state, time.monotonic)
    try:
        policy = await factory(st, st.config)
        assert policy is not None and policy.claims
        seen: list[Claim | None] = []

        async def answers_itself(ex: Exchange) -> UpstreamResponse:
            seen.append(ex.state.get(PRE_CLAIM))
            return await Upstream()(ex)

        resp = await policy(exchange(st, {"model": "gpt-4o", "temperature": 0,
                                          "messages": [{"role": "user", "content": "one"}]}), answers_itself)
        await st.backend.drain()  # before the body ends (the entry, written then, takes the key after)
        claim = seen[0]
        assert claim is not None and claim.won and not claim.used
        assert await st.backend.client.exists(claim.key) == 0
        await drain(resp)
        assert st.metrics.registry.get_sample_value(
            "gateway_policy_decisions_total", {"policy": "coalesce", "decision": "fleet_claim_unused"}) == 1

        async def coalesced(ex: Exchange) -> UpstreamResponse:
            pre = ex.state.get(PRE_CLAIM)
            assert pre is not None
            pre.used = True  # what the coalescing layer does
            seen.append(pre)
            return await Upstream()(ex)

        resp = await policy(exchange(st, {"model": "gpt-4o", "temperature": 0,
                                          "messages": [{"role": "user", "content": "two"}]}), coalesced)
        await st.backend.drain()
        used = seen[1]
        assert used is not None and used.won
        assert await st.backend.client.get(used.key) == policy.rt.fleet_owner.encode()  # still claimed
        await drain(resp)

        await drain(await policy(exchange(st, {"model": "gpt-4o", "temperature": 0.7,
                                               "messages": [{"role": "user", "content": "three"}]}),
                                 answers_itself))
        assert seen[2] is None  # not deterministic: not cached, not coalesced, no claim
    finally:
        await st.backend.close()


class StreamUpstream:
    """Streams ``ANSWER`` as a provider does (a usage chunk when asked), in one chunk per event."""

    def __init__(self) -> None:
        self.calls = 0

    def events(self, include_usage: bool) -> list[bytes]:
        head = {"id": ANSWER["id"], "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o"}
        deltas = [({"role": "assistant", "content": ""}, None), ({"content": "hi"}, None),
                  ({"content": " there"}, None), ({}, "stop")]
        out = [{**head, "choices": [{"index": 0, "delta": d, "logprobs": None, "finish_reason": f}]}
               for d, f in deltas]
        if include_usage:
            out.append({**head, "choices": [], "usage": ANSWER["usage"]})
        return [b"data: " + orjson.dumps(e) + b"\n\n" for e in out] + [b"data: [DONE]\n\n"]

    async def __call__(self, ex: Exchange) -> UpstreamResponse:
        self.calls += 1
        opts = (ex.body or {}).get("stream_options") or {}
        return UpstreamResponse(200, {"content-type": "text/event-stream"},
                                body_of(self.events(opts.get("include_usage") is True)))


def _decisions(st: AppState, decision: str) -> float | None:
    return st.metrics.registry.get_sample_value("gateway_policy_decisions_total",
                                                {"policy": "exact_cache", "decision": decision})


async def test_a_stream_stored_raw_serves_both_modes_as_an_eager_store_did() -> None:
    """A streamed miss is stored as it came; the first hit assembles it: a JSON hit gets the very body a
    JSON miss stores, a stream hit the replay of the same answer, with usage only when asked. ``stored``
    counts once, at the miss; the cache's bytes follow the assembly."""
    st = make_state()
    policy = await factory(st, st.config)
    assert policy is not None
    up = StreamUpstream()
    chat = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello"}], "temperature": 0}
    asked = {**chat, "stream": True, "stream_options": {"include_usage": True}}
    miss = await drain(await policy(exchange(st, asked), up))
    entry = policy.rt.exact.memory._slots[next(iter(policy.rt.exact.memory._slots))].answer
    assert entry.stream() == miss and entry.body == b"" and _decisions(st, "stored") == 1
    hit = exchange(st, asked)
    replayed = await drain(await policy(hit, up))
    assert answer_from_sse("chat", replayed) == answer_from_sse("chat", miss) and b'"usage":{' in replayed
    assert hit.record.cache_result == "hit" and entry.raw is None
    assert hit.record.reported_usage is not None and hit.record.reported_usage.total == 5
    json_st = make_state()
    json_policy = await factory(json_st, json_st.config)
    assert json_policy is not None
    await drain(await json_policy(exchange(json_st, chat), Upstream()))
    eager = next(iter(json_policy.rt.exact.memory._slots.values())).answer.body
    assert entry.body == eager  # what the non-stream miss stored, byte for byte
    plain = await drain(await policy(exchange(st, {**chat, "stream": True}), up))
    assert b'"usage"' not in plain and plain.endswith(b"data: [DONE]\n\n")
    assert b'"content":"hi there"' in plain
    assert orjson.loads(await drain(await policy(exchange(st, chat), up))) == ANSWER
    assert up.calls == 1 and _decisions(st, "stored") == 1
    memory = policy.rt.exact.memory
    assert memory.bytes == entry.size == sum(slot.size for slot in memory._slots.values())
    assert st.metrics.registry.get_sample_value("gateway_cache_bytes", {"kind": "exact"}) == memory.bytes


async def test_a_raw_stream_that_does_not_assemble_is_a_counted_miss_never_an_error() -> None:
    st = make_state()
    policy = await factory(st, st.config)
    assert policy is not None
    up = StreamUpstream()
    asked = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello"}], "temperature": 0,
             "stream": True}
    await drain(await policy(exchange(st, asked), up))
    entry = next(iter(policy.rt.exact.memory._slots.values())).answer
    stored = entry.stream()
    assert stored is not None
    entry.raw = zlib.compress(stored.replace(b'"content":"hi"', b'"content":"hi'))  # damaged in memory
    again = exchange(st, asked)
    body = await drain(await policy(again, up))
    assert again.record.cache_result == "miss" and up.calls == 2 and body.endswith(b"data: [DONE]\n\n")
    assert _decisions(st, "dropped_unassemblable") == 1 and _decisions(st, "stored") == 2  # stored again
    control = exchange(st, asked)
    await drain(await policy(control, up))
    assert control.record.cache_result == "hit" and _decisions(st, "dropped_unassemblable") == 1
