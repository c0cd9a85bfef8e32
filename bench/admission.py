"""Admission control benchmark: what admitting one request costs (tokenizer + buckets).

Both rate-limit policies (client key: rpm + tpm + max_concurrency + daily_tokens;
upstream: rpm + tpm + max_concurrency) are called in-process, as the onion calls
them, around a terminal that answers at once with a small JSON body carrying
usage; the body is read to its end so the reservation is settled. Limits are
high enough never to refuse: this measures the price of saying yes.

* ``tokenize``: ``prompt_tokens`` alone, the part that grows with the prompt.
  *cold*: every message is new (first request of a conversation); *warm*: the
  same history plus one new user message (an agent loop: the tokenizer's
  per-string memo already knows every earlier message).
* ``admit``: both policies, tokenizer included (the prompt is counted once per
  request and shared with cache, compression and usage estimation).
* ``buckets only``: the same limits without ``tpm``/``daily_tokens``: nothing
  to count, only bucket arithmetic (and Redis round trips).

Memory and Redis backends (Redis: a local ``redis-server`` started here; the
settle script runs after the answer, off the request's path, and is awaited
separately).

Run: ``python -m bench.admission [--n 300]``.
"""
from __future__ import annotations

import argparse
import asyncio
import random
import secrets
import statistics
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.appstate import AppState, Runtime
from gateway.auth import Authenticator
from gateway.config import parse_config
from gateway.config_model import Config
from gateway.exchange import Exchange, UpstreamResponse
from gateway.routing import Router
from gateway.state.redis_client import GuardedRedis
from gateway.telemetry.metrics import Metrics
from gateway.tokens.prompt import prompt_tokens
from gateway.tokens.tokenizer import Tokenizer
from policies.ratelimit import client_layer as rate_limit_client
from policies.ratelimit import upstream_layer as rate_limit_upstream
from policies.ratelimit.runtime import COMPONENT, RateLimiter
from tests.support.exchange import build_exchange
from tests.support.servers import RedisServer, free_port, gateway_config, redis_server_binary

KEY = "sk-bench"
BIG = 10**12
WORDS = [f"{w}{i}"
         for i, w in enumerate(("alpha", "beta", "gamma", "delta", "sidecar", "token", "queue")) ] + \
    ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "agents", "call", "tools",
     "and", "read", "files"]


def history(tokens: int, seed: int) -> list[dict[str, str]]:
    """A conversation of about ``tokens`` prompt tokens in ~500-token messages."""
    rng = random.Random(seed)
    messages = [{"role": "system", "content": "You are a careful coding agent."}]
    per_message_words = 380  # ~1.3 tokens per word
    for i in range(max(1, tokens // 500)):
        text = " ".join(rng.choice(WORDS) for _ in range(per_message_words))
        messages.append({"role": "user" if i % 2 == 0 else "assistant", "content": f"[{seed}:{i}] {text}"})
    return messages


def config(redis_url: str | None, count_tokens: bool) -> Config:
    key: dict[str, Any] = {"key": KEY, "tenant": "bench", "rpm": BIG, "max_concurrency": 1_000_000}
    upstream: dict[str, Any] = {"rpm": BIG, "max_concurrency": 1_000_000}
    if count_tokens:
        key |= {"tpm": BIG, "daily_tokens": BIG}
        upstream["tpm"] = BIG
    overrides: dict[str, Any] = {
        "auth": {"mode": "keys", "keys": [key]},
        "upstreams": {"mock": {"base_url": "http://127.0.0.1:9/v1", "rate_limit": upstream}},
    }
    if redis_url:
        overrides["state"] = {"backend": "redis", "redis_url": redis_url,
                              "key_prefix": f"b{secrets.token_hex(3)}:", "timeout_ms": 1000}
    return parse_config(gateway_config("http://127.0.0.1:9/v1", **overrides), {})


async def build(cfg: Config, tokenizer: Tokenizer) -> tuple[AppState, Callable[[Exchange], Any]]:
    st = AppState(runtime=Runtime(config=cfg, router=Router(cfg.routes), auth=Authenticator(cfg.auth),
                                  chain=None))  # type: ignore[arg-type]
    st.metrics = Metrics()
    st.tokenizer = tokenizer
    if cfg.state.backend == "redis":
        st.backend = GuardedRedis.from_config(cfg.state, st.clock)
    client = await rate_limit_client.factory(st, cfg)
    upstream = await rate_limit_upstream.factory(st, cfg)
    assert client is not None and upstream is not None
    answer = orjson.dumps({"choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 5}})

    async def body() -> AsyncIterator[bytes]:
        yield answer

    async def terminal(ex: Exchange) -> UpstreamResponse:
        return UpstreamResponse(200, {"content-type": "application/json"}, body(), upstream="mock")

    async def chain(ex: Exchange) -> UpstreamResponse:
        return await client(ex, lambda e: upstream(e, terminal))

    return st, chain


def exchange(st: AppState, messages: list[dict[str, str]]) -> Exchange:
    body = {"model": "gpt-4o", "messages": messages, "max_tokens": 256}
    headers = CIMultiDictProxy(CIMultiDict({"authorization": f"Bearer {KEY}"}))
    identity = st.runtime.auth.identify(headers)
    ex = build_exchange(request_id="b", method="POST", path="/v1/chat/completions", operation="chat",
                        headers=headers, raw_body=b"", body=body, received_at=0.0, deadline=st.clock() + 600,
                        model="gpt-4o", upstream="mock", upstream_model="gpt-4o", identity=identity)
    return ex


def requests(size: int, n: int, warm: bool, first_seed: int = 1) -> list[list[dict[str, str]]]:
    """n prompts of ``size`` tokens: all new (cold) or one shared history plus a new last message (warm)."""
    if warm:
        base = history(size, 0)
        return [[*base, {"role": "user", "content": f"next step {first_seed + i}, please"}] for i in range(n)]
    return [history(size, first_seed + i) for i in range(n)]


def us(samples: list[float]) -> str:
    samples = sorted(samples)
    p50 = statistics.median(samples)
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
    return f"{p50 * 1e6:,.0f} / {p99 * 1e6:,.0f}"


async def run_admit(st: AppState, chain: Callable[[Exchange], Any], prompts: list[list[dict[str, str]]]) -> \
        tuple[list[float], float]:
    limiter: RateLimiter = st.components[COMPONENT]
    times: list[float] = []
    settle = 0.0
    for messages in prompts:
        ex = exchange(st, messages)
        started = time.perf_counter()
        resp = await chain(ex)
        async for _ in resp.body:
            pass
        times.append(time.perf_counter() - started)
        settled = time.perf_counter()
        await limiter.drain()
        settle += time.perf_counter() - settled
    return times, settle / len(prompts)


def run_tokenize(st: AppState, prompts: list[list[dict[str, str]]]) -> list[float]:
    times = []
    for messages in prompts:
        ex = exchange(st, messages)
        started = time.perf_counter()
        prompt_tokens(st, ex)
        times.append(time.perf_counter() - started)
    return times


async def measure(n: int, redis_url: str | None) -> list[tuple[str, str, str]]:
    """Rows of (what, backend, p50 / p99 microseconds)."""
    backend = "redis" if redis_url else "memory"
    rows = []
    for size in (1_000, 50_000):
        count = n if size == 1_000 else max(20, n // 10)
        for warm in (False, True):
            label = f"{size // 1000}k tokens, {'warm' if warm else 'cold'}"
            tokenizer = Tokenizer()
            tokenizer.preload(["o200k_base"])
            st, chain = await build(config(redis_url, True), tokenizer)
            if warm:
                await run_admit(st, chain, requests(size, 3, True))  # the history has been seen before
            if not redis_url:
                rows.append((f"tokenize {label}", "-", us(run_tokenize(st, requests(size, count, warm)))))
            times, settle = await run_admit(st, chain, requests(size, count, warm, first_seed=10_000))
            rows.append((f"admit {label}", backend,
                         us(times) + (f" (+{settle * 1e6:,.0f} settle)" if redis_url
                                      else "")))
            await close(st)
    st, chain = await build(config(redis_url, False), Tokenizer())
    times, settle = await run_admit(st, chain, requests(1_000, n, False))
    rows.append(("buckets only (rpm+concurrency)", backend, us(times) + (f" (+{settle * 1e6:,.0f} settle)"
                                                                          if redis_url else "")))
    await close(st)
    return rows


async def close(st: AppState) -> None:
    if st.backend is not None:
        await st.backend.close()


async def main(n: int) -> None:
    binary = redis_server_binary()
    server = RedisServer(port=free_port(), binary=binary) if binary else None
    if server is not None:
        server.start()
    try:
        rows = await measure(n, None)
        if server is not None:
            rows += await measure(n, server.url)
    finally:
        if server is not None:
            server.kill()
    print("| what | backend | p50 / p99 (µs) |")
    print("|---|---|---|")
    for what, backend, figures in rows:
        print(f"| {what} | {backend} | {figures} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300, help="requests per 1k-token scenario (50k: n/10)")
    try:
        import uvloop  # the server's loop

        uvloop.run(main(parser.parse_args().n))
    except ImportError:
        asyncio.run(main(parser.parse_args().n))
