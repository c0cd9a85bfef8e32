"""Light streams' time to first token while honest 128k-token prompts go through (issue 15).

16 clients each send a ~500 KB agent conversation (about 128k tokens of varied English, made
unique per request so no cache answers it) over and over; 32 clients meanwhile open tiny
streaming chats and measure the time to the first SSE byte. The same light load runs alone
first (the baseline), so "added by heavy prompts" is a same-run difference. Mock provider and
gateway run in their own processes; gateway CPU seconds are read from ``/proc``.

Run: ``python -m bench.heavy_prompts --seconds 5 [--heavy-rps 20] [--source-tree /path/to/other/checkout]``.
The heavy clients go back to back by default (a closed loop: a faster gateway gets more heavy
load); ``--heavy-rps`` offers the same heavy load to any tree.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from typing import Any

import aiohttp
import orjson

from bench.procs import Server, cpu_seconds, start_gateway, start_mock

WORDS = ("agent tool result order customer invoice shipping status pending refund warehouse "
         "the a of to and in is for on with that this it as be by are was from at or an").split()


MARK = b"@@REQUEST@@"


def heavy_body(i: int, target_bytes: int = 500_000) -> bytes:
    """One client's conversation, made once; ``MARK`` is replaced per request (unique, cheaply)."""
    rng = random.Random(i)
    messages: list[dict[str, Any]] = [{"role": "system", "content": "You are a helpful agent."}]
    size = 0
    turn = 0
    while size < target_bytes:
        text = " ".join(rng.choice(WORDS) for _ in range(1500)) + f" turn {turn} @@REQUEST@@"
        messages.append({"role": "user" if turn % 2 == 0 else "assistant", "content": text})
        size += len(text)
        turn += 1
    return orjson.dumps({"model": "gpt-4o", "messages": messages, "max_tokens": 16})


LIGHT = orjson.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "ping"}], "stream": True,
                      "max_tokens": 8})


async def light_client(session: aiohttp.ClientSession, url: str, end: float, ttfts: list[float]) -> None:
    loop = asyncio.get_running_loop()
    while loop.time() < end:
        started = time.perf_counter()
        async with session.post(url, data=LIGHT, headers={"authorization": "Bearer light"}) as resp:
            await resp.content.readany()
            ttfts.append(time.perf_counter() - started)
            await resp.read()


async def heavy_client(session: aiohttp.ClientSession, url: str, end: float, n: int, base: bytes,
                       done: list[int], interval_s: float = 0.0) -> None:
    """Back to back, or one request every ``interval_s`` (an open loop: the same heavy load whatever
    the gateway's speed, so two trees are compared at the same offered load)."""
    loop = asyncio.get_running_loop()
    i = 0
    next_at = loop.time()
    while loop.time() < end:
        body = base.replace(MARK, f"{n}-{i}".encode())
        async with session.post(url, data=body, headers={"authorization": "Bearer heavy"}) as resp:
            await resp.read()
            done.append(resp.status)
        i += 1
        if interval_s > 0:
            next_at += interval_s
            await asyncio.sleep(max(0.0, next_at - loop.time()))


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] if ordered else 0.0


async def phase(url: str, seconds: float, heavy: int, heavy_rps: float = 0.0) -> dict[str, Any]:
    ttfts: list[float] = []
    done: list[int] = []
    bases = [heavy_body(n) for n in range(heavy)]  # built before the clock runs; requests only swap MARK
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        end = asyncio.get_running_loop().time() + seconds
        interval = heavy / heavy_rps if heavy_rps else 0.0
        await asyncio.gather(*(light_client(session, url, end, ttfts) for _ in range(32)),
                             *(heavy_client(session, url, end, n, bases[n], done, interval)
                               for n in range(heavy)))
    return {"light_ttft_p50_ms": pct(ttfts, 50) * 1000, "light_ttft_p99_ms": pct(ttfts, 99) * 1000,
            "light_requests": len(ttfts), "heavy_requests": len(done),
            "heavy_statuses": sorted(set(done))}


def run(seconds: float, source_tree: str | None, heavy_rps: float = 0.0) -> dict[str, Any]:
    mock = start_mock()
    gateway: Server | None = None
    try:
        config = {"server": {"drain_s": 1, "grace_s": 0, "workers": 1},
                  "upstreams": {"mock": {"base_url": mock.url + "/v1", "api_key": "sk-bench"}},
                  "routes": [{"match": {"model": "*"}, "upstream": "mock"}], "ledger": {"enabled": False}}
        gateway = start_gateway("gateway", config, source_tree=source_tree)
        url = gateway.url + "/v1/chat/completions"
        asyncio.run(phase(url, 1.0, 0))  # warm up (encodings, pools)
        baseline = asyncio.run(phase(url, seconds, 0))
        cpu = cpu_seconds(gateway.pid)
        heavy = asyncio.run(phase(url, seconds, 16, heavy_rps))
        heavy_cpu = cpu_seconds(gateway.pid) - cpu
        return {"seconds": seconds, "source_tree": source_tree or "this tree",
                "heavy_rps": heavy_rps or "max", "baseline": baseline,
                "with_16_heavy": heavy,
                "added_ttft_p99_ms": heavy["light_ttft_p99_ms"] - baseline["light_ttft_p99_ms"],
                "gateway_cpu_s_per_heavy_request": heavy_cpu / max(1, heavy["heavy_requests"])}
    finally:
        if gateway is not None:
            gateway.stop()
        mock.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--source-tree", help="run the gateway from another checkout (a baseline)")
    parser.add_argument("--heavy-rps", type=float, default=0.0,
                        help="heavy requests per second in all (default: back to back)")
    args = parser.parse_args()
    print(json.dumps(run(args.seconds, args.source_tree, args.heavy_rps), indent=2))


if __name__ == "__main__":
    main()
