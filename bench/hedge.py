"""Hedged first token: TTFT p99 and extra upstream calls when 5% of primary answers start 10x slower.

The real gateway in-process in front of the fake provider, which plays a primary and a fallback
deployment (the fallback serves another model name; scripted faults match the primary's). Each
request is a stream; 5% of them (every 20th) get a primary whose first token comes 10x later
than the usual ``--ttft-ms``. Sequential requests, so each slow answer is attributed exactly.
Three runs: healthy (no slow answers), slow without hedging, slow with ``hedge``. Figures: client
TTFT (time to the first content chunk) p50/p99, and extra upstream calls per request.

    python -m bench.hedge                       # 400 requests, ttft 20 ms, hedge after p95
    python -m bench.hedge --hedge-after-s 0.04  # a fixed hedge delay instead
"""
from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import aiohttp

from gateway.mock import MockConfig, MockServer, start_mock
from tests.support.servers import gateway_config, start_gateway

PRIMARY, FALLBACK = "gpt-4o", "gpt-4o-mini"
CHAT = [{"role": "user", "content": "Say hello"}]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def ttft_of(http: aiohttp.ClientSession, url: str) -> float:
    started = time.perf_counter()
    first = 0.0
    async with http.post(url, json={"model": PRIMARY, "messages": CHAT, "stream": True}) as resp:
        async for line in resp.content:
            token = line.startswith(b"data: {") and b'"content":"' in line and b'"content":""' not in line
            if token and not first:
                first = time.perf_counter() - started
    return first


async def one_run(mock: MockServer, hedge: dict[str, Any] | None, n: int, slow_ms: float | None) -> str:
    up = {"base_url": mock.url, "api_key": "k", "timeouts": {"first_byte_s": 30}}
    route: dict[str, Any] = {"match": {"model": PRIMARY}, "upstream": "primary",
                             "fallbacks": [{"upstream": "backup", "model": FALLBACK}]}
    if hedge:
        route["hedge"] = hedge
    cfg = gateway_config(mock.url, upstreams={"primary": up, "backup": up}, routes=[route])
    gw = await start_gateway(cfg)
    mock.recorder.clear()
    ttfts: list[float] = []
    try:
        async with aiohttp.ClientSession() as http:
            url = gw.base_url + "/chat/completions"
            for i in range(n):
                if slow_ms is not None and i % 20 == 19:
                    entry = {"fault": f"ttft_ms={slow_ms}", "times": 1, "match": {"model": PRIMARY}}
                    async with http.post(mock.base_url + "/_mock/faults", json={"faults": [entry]}) as r:
                        assert r.status == 200
                ttfts.append(await ttft_of(http, url))
    finally:
        await gw.close()
    calls = len(mock.recorder.attempts)
    return (f"p50={pct(ttfts, 0.5) * 1000:.1f} ms p99={pct(ttfts, 0.99) * 1000:.1f} ms "
            f"extra upstream calls={(calls - n) / n:.1%}")


async def main(args: argparse.Namespace) -> None:
    mock = await start_mock(MockConfig(ttft_ms=args.ttft_ms))
    slow = args.ttft_ms * 10
    hedge: dict[str, Any] = ({"after_s": args.hedge_after_s} if args.hedge_after_s
                             else {"after": "p95", "min_samples": 20})
    try:
        print(f"healthy, no hedge       {await one_run(mock, None, args.n, None)}")
        print(f"5% slow, no hedge       {await one_run(mock, None, args.n, slow)}")
        print(f"5% slow, hedge {hedge}  {await one_run(mock, hedge, args.n, slow)}")
    finally:
        await mock.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--n", type=int, default=400)
    parser.add_argument("--ttft-ms", type=float, default=20.0)
    parser.add_argument("--hedge-after-s", type=float, default=0.0)
    asyncio.run(main(parser.parse_args()))
