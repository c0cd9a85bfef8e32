"""The client rate limit policy: 429 at once with OpenAI headers, slots held to the stream's end,
reconcile."""
from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from functools import cache
from typing import Any

import orjson
import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.appstate import AppState, Runtime
from gateway.auth import Authenticator
from gateway.config import parse_config
from gateway.errors import LocalReply, UpstreamFailure
from gateway.exchange import Exchange, UpstreamResponse
from gateway.routing import Router
from gateway.sse import StreamInspector
from gateway.telemetry.metrics import Metrics
from gateway.tokens.tokenizer import Tokenizer
from policies.ratelimit.buckets import LimiterClock
from policies.ratelimit.client_layer import ClientRateLimit, factory
from policies.ratelimit.runtime import COMPONENT, RateLimiter
from tests.support.exchange import build_exchange
from tests.support.servers import gateway_config

KEY = "sk-team-a"
SSE = {"content-type": "text/event-stream"}
JSON = {"content-type": "application/json"}


class FrozenClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


@cache
def shared_tokenizer() -> Tokenizer:
    """Loading an encoding takes ~0.2 s: tests share one tokenizer (it only memoises counts)."""
    return Tokenizer()


def make_state(**overrides: Any) -> AppState:
    """An AppState with metrics, tokenizer and the config (one upstream ``mock``), as the app builds it."""
    cfg = parse_config(gateway_config("http://127.0.0.1:9/v1", **overrides), {})
    st = AppState(runtime=Runtime(config=cfg, router=Router(cfg.routes), auth=Authenticator(cfg.auth),
                                  chain=None))  # type: ignore[arg-type]
    st.metrics = Metrics()
    st.tokenizer = shared_tokenizer()
    return st


def freeze(st: AppState) -> FrozenClock:
    """Run the limiter on a clock that only moves when the test moves it."""
    clock = FrozenClock()
    limiter: RateLimiter = st.components[COMPONENT]
    limiter.set_clock(LimiterClock(now=clock))
    return clock


def exchange(st: AppState, body: dict[str, Any] | None = None, key: str = KEY, **kw: Any) -> Exchange:
    body = body or {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello there"}],
                    "max_tokens": 50}
    headers = CIMultiDictProxy(CIMultiDict({"authorization": f"Bearer {key}", **kw.pop("headers", {})}))
    identity = st.runtime.auth.identify(headers)
    ex = build_exchange(request_id="r", method="POST", path="/v1/chat/completions", operation="chat",
                        headers=headers,
                  raw_body=orjson.dumps(body), body=body, received_at=0.0, deadline=st.clock() + 600,
                        model="gpt-4o",
                  upstream="mock", upstream_model="gpt-4o", identity=identity,
                  stream=body.get("stream") is True, upstream_path="/chat/completions", **kw)
    return ex


async def chunks_of(chunks: list[bytes], fail_after: int | None = None) -> AsyncIterator[bytes]:
    for i, c in enumerate(chunks):
        if fail_after is not None and i == fail_after:
            raise UpstreamFailure("reset_mid_stream", "gone", committed=True)
        yield c


def answering(chunks: list[bytes], headers: dict[str, str] | None = None, status: int = 200,
              fail_after: int | None = None) -> Callable[[Exchange], Any]:
    calls: list[Exchange] = []

    async def call(ex: Exchange) -> UpstreamResponse:
        calls.append(ex)
        return UpstreamResponse(status=status, headers=headers or JSON, body=chunks_of(chunks, fail_after),
                                upstream="mock")

    call.calls = calls  # type: ignore[attr-defined]
    return call


def usage_body(prompt: int, completion: int) -> bytes:
    return orjson.dumps({"id": "x", "object": "chat.completion", "choices": [],
                         "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                                   "total_tokens": prompt + completion}})


def sse_chunks(words: int, usage: tuple[int, int] | None = None) -> list[bytes]:
    out = [b'data: {"choices":[{"index":0,"delta":{"content":"w"}}]}\n\n' for _ in range(words)]
    if usage is not None:
        out.append(b'data: {"choices":[],"usage":{"prompt_tokens":%d,"completion_tokens":%d}}\n\n' % usage)
    return [*out, b"data: [DONE]\n\n"]


async def drain(resp: UpstreamResponse, ex: Exchange | None = None) -> None:
    """Consume like the handler's relay does (feeding the stream inspector for SSE)."""
    inspector = StreamInspector(lambda: 0.0) if resp.is_sse else None
    if ex is not None:
        ex.view = inspector
    try:
        async for c in resp.body:
            if inspector is not None:
                inspector.feed(c)
    finally:
        await resp.body.aclose()  # type: ignore[attr-defined]


def sample(st: AppState, name: str, **labels: str) -> float:
    return st.metrics.registry.get_sample_value(name, labels) or 0.0


async def policy_for(**key: Any) -> tuple[ClientRateLimit, AppState]:
    st = make_state(auth={"mode": "keys", "keys": [{"key": KEY, "tenant": "team-a", **key}]})
    policy = await factory(st, st.config)
    assert policy is not None
    return policy, st


async def test_over_the_limit_gets_429_with_openai_headers() -> None:
    """The third request of a 2-rpm key is refused at once with Retry-After and x-ratelimit-* headers."""
    policy, st = await policy_for(rpm=2, tpm=10_000)
    freeze(st)
    nxt = answering([usage_body(5, 5)])
    for _ in range(2):
        ex = exchange(st)
        await drain(await policy(ex, nxt))
        assert ex.response_headers["x-ratelimit-limit-requests"] == "2"
    assert ex.response_headers["x-ratelimit-remaining-requests"] == "0"
    with pytest.raises(LocalReply) as info:
        await policy(exchange(st), nxt)
    reply = info.value
    assert reply.status == 429 and reply.code == "rate_limit_exceeded" and reply.type == "requests"
    assert reply.headers["retry-after"] == "30" and reply.headers["retry-after-ms"] == "30000"
    assert reply.headers["x-ratelimit-limit-requests"] == "2"
    assert reply.headers["x-ratelimit-remaining-requests"] == "0"
    assert reply.headers["x-ratelimit-reset-requests"] == "1m0s"
    assert reply.headers["x-ratelimit-limit-tokens"] == "10000"
    assert int(reply.headers["x-ratelimit-remaining-tokens"]) >= 9_970
    assert len(nxt.calls) == 2  # type: ignore[attr-defined]
    assert sample(st, "gateway_rate_limit_decisions_total", scope="client", limit="rpm",
                  decision="rejected") == 1
    assert sample(st, "gateway_policy_decisions_total", policy="rate_limit_client", decision="allowed") == 2


async def test_shadow_mode_counts_but_lets_through() -> None:
    """enforce: false on a key counts the would-be rejection and still calls the upstream."""
    policy, st = await policy_for(rpm=1, enforce=False)
    freeze(st)
    nxt = answering([usage_body(1, 1)])
    for _ in range(3):
        await drain(await policy(exchange(st), nxt))
    assert len(nxt.calls) == 3  # type: ignore[attr-defined]
    assert sample(st, "gateway_rate_limit_decisions_total", scope="client", limit="rpm",
                  decision="shadow_rejected") == 2


async def test_slot_is_held_until_the_stream_ends() -> None:
    """max_concurrency counts answers still streaming, and a client that goes away frees its slot."""
    policy, st = await policy_for(max_concurrency=1)
    nxt = answering(sse_chunks(3), headers=SSE)
    first = await policy(exchange(st), nxt)
    with pytest.raises(LocalReply) as info:
        await policy(exchange(st), nxt)
    assert info.value.status == 429 and info.value.headers["retry-after"] == "1"
    await drain(first)
    second = await policy(exchange(st), nxt)
    gen = second.body.__aiter__()
    await gen.__anext__()
    await second.body.aclose()  # type: ignore[attr-defined]  # client gone mid-stream
    await drain(await policy(exchange(st), nxt))


async def test_reconciles_with_reported_usage() -> None:
    """The reservation (prompt + max_tokens) is replaced by the real usage when the answer ends."""
    policy, st = await policy_for(tpm=1000)
    freeze(st)
    limiter: RateLimiter = st.components[COMPONENT]
    ex = exchange(st)
    resp = await policy(ex, answering([usage_body(7, 20)]))
    reserved = ex.record.prompt_tokens + 50
    ls = policy._sets[ex.request.identity.key_hash]
    assert ls is not None
    assert limiter.memory.level(ls, "tpm") == 1000 - reserved
    await drain(resp)
    assert limiter.memory.level(ls, "tpm") == 1000 - 27
    assert sample(st, "gateway_tokens_reserved_total") == reserved
    assert sample(st, "gateway_tokens_reconciled_total", direction="refund") == reserved - 27


async def test_cut_stream_is_charged_what_it_produced() -> None:
    """A stream broken mid-way without usage is charged its prompt plus the chunks already produced."""
    policy, st = await policy_for(tpm=1000)
    freeze(st)
    limiter: RateLimiter = st.components[COMPONENT]
    ex = exchange(st, {"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": "hi"}],
                       "max_tokens": 300})
    resp = await policy(ex, answering(sse_chunks(10), headers=SSE, fail_after=4))
    with pytest.raises(UpstreamFailure):
        await drain(resp, ex)
    ls = policy._sets[ex.request.identity.key_hash]
    assert ls is not None
    assert limiter.memory.level(ls, "tpm") == 1000 - (ex.record.prompt_tokens + 4)


async def test_error_answers_cost_no_tokens_and_inner_failures_release() -> None:
    """A 4xx/5xx answer refunds its tokens; an exception from inside releases the slot and tokens."""
    policy, st = await policy_for(tpm=1000, max_concurrency=1)
    freeze(st)
    limiter: RateLimiter = st.components[COMPONENT]
    await drain(await policy(exchange(st), answering([b'{"error":{}}'], status=500)))

    async def boom(ex: Exchange) -> UpstreamResponse:
        raise LocalReply(429, "inner refusal")

    with pytest.raises(LocalReply):
        await policy(exchange(st), boom)
    ex = exchange(st)
    ls = policy._sets[ex.request.identity.key_hash]
    assert ls is not None
    assert limiter.memory.level(ls, "tpm") == 1000 and limiter.memory.level(ls, "concurrency") == 1


async def test_daily_budget_refusal() -> None:
    """A key past its daily_tokens is refused as 'tokens' with Retry-After until UTC midnight."""
    policy, st = await policy_for(daily_tokens=50)
    with pytest.raises(LocalReply) as info:
        await policy(exchange(st), answering([usage_body(1, 1)]))
    reply = info.value
    assert reply.type == "tokens" and "Request too large" in reply.message
    ex = exchange(st, {"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1})
    await drain(await policy(ex, answering([usage_body(40, 10)])))
    with pytest.raises(LocalReply) as info:
        await policy(exchange(st, {"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}],
                                   "max_tokens": 10}), answering([]))
    assert 1 <= int(info.value.headers["retry-after"]) <= 86400
    assert info.value.headers["x-ratelimit-limit-tokens"] == "50"


async def test_keys_without_limits_skip_the_layer() -> None:
    """Passthrough mode builds no layer; a key without limits passes untouched and is never tokenised."""
    assert await factory(make_state(), make_state().config) is None
    st = make_state(auth={"mode": "keys", "keys": [{"key": KEY, "tenant": "a"}, {"key": "sk-b", "tenant": "b",
                                                                                   "rpm": 5}]})
    policy = await factory(st, st.config)
    assert policy is not None
    ex = exchange(st)
    await drain(await policy(ex, answering([usage_body(1, 1)])))
    assert ex.record.prompt_tokens is None and not ex.response_headers
    ex = exchange(st, key="sk-b")
    await drain(await policy(ex, answering([usage_body(1, 1)])))
    assert ex.record.prompt_tokens is None  # rpm only: nothing to count
    assert ex.response_headers["x-ratelimit-remaining-requests"] == "4"
