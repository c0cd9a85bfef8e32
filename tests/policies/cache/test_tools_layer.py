"""The tool-route cache: reads cached per tenant, writes and fallbacks never."""
from __future__ import annotations

from typing import Any

from gateway.components import TOOL_READ
from gateway.exchange import Exchange, UpstreamResponse
from policies.cache.runtime import cache_runtime
from policies.cache.tools_layer import ToolCache
from tests.policies.cache.support import body_of, drain, exchange, make_state


class Tool:
    def __init__(self, source: Any = "upstream") -> None:
        self.calls = 0
        self.source = source

    async def __call__(self, ex: Exchange) -> UpstreamResponse:
        self.calls += 1
        return UpstreamResponse(
            200, {"content-type": "application/json"}, body_of([b'{"q":1}']), source=self.source
        )


def tool_ex(st: Any, read: bool, key: str = "sk-a") -> Exchange:
    ex = exchange(st, key=key, operation="tool")
    ex.request = ex.request._replace(method="GET", upstream_path="/v1/price")
    ex.target.upstream, ex.raw_body = "quotes", b""
    ex.state[TOOL_READ] = read
    return ex


async def test_reads_cached_per_tenant_writes_not() -> None:
    """A repeated read is a hit; another key misses; writes and fallback answers are never stored."""
    st = make_state()
    cache = ToolCache(st.config, cache_runtime(st, st.config))
    up = Tool()
    for key, expect in (("sk-a", "miss"), ("sk-a", "hit"), ("sk-b", "miss")):
        ex = tool_ex(st, True, key)
        assert await drain(await cache(ex, up)) == b'{"q":1}'
        assert ex.record.cache_result == expect
    writes = Tool()
    for _ in range(2):
        await drain(await cache(tool_ex(st, False), writes))
    fallback = Tool(source="local")
    for _ in range(2):
        ex = tool_ex(st, True, "sk-c")
        await drain(await cache(ex, fallback))
    assert (up.calls, writes.calls, fallback.calls) == (2, 2, 2)
