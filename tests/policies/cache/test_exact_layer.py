"""The exact cache policy: stores clean answers, serves them in both modes, respects modes and tenants."""
from __future__ import annotations

import orjson

from policies.cache.exact_layer import factory
from tests.policies.cache.support import ANSWER, Upstream, drain, exchange, make_state


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
