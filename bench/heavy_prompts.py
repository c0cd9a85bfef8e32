"""Light streams' time to first token while honest 128k-token prompts go through (issue 15).

16 clients each send a ~500 KB agent conversation (about 128k tokens of varied English, made
unique per request so no cache answers it) over and over; 32 clients meanwhile open tiny
streaming chats and measure the time to the first SSE byte. The same light load runs alone
first (the baseline), so "added by heavy prompts" is a same-run difference. Mock provider and
gateway run in their own processes; gateway CPU seconds are read from ``/proc``.

The same two phases also run straight against the mock provider (``direct``), whose own parse and
token count of each 500 KB prompt share the machine's cores: "added by the gateway" is the light
streams' TTFT through the gateway minus direct, under the same offered heavy load (``--heavy-rps``).

Run: ``python -m bench.heavy_prompts --seconds 5 [--heavy-rps 16] [--light-rps 320] [--source-tree DIR]``.
The heavy clients go back to back by default (a closed loop: a faster gateway gets more heavy
load); ``--heavy-rps`` offers the same heavy load to any tree. The light clients too; ``--light-rps``
paces them (10/s each at 320), so their TTFT measures latency, not the machine's capacity.
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
LIGHT_CLIENTS = 32


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


async def light_client(session: aiohttp.ClientSession, url: str, end: float, ttfts: list[float],
                       interval_s: float = 0.0) -> None:
    """Back to back (a closed loop: at 32 clients that measures the machine's capacity more than
    latency), or one stream every ``interval_s`` (an agent that thinks between calls)."""
    loop = asyncio.get_running_loop()
    next_at = loop.time() + random.random() * interval_s  # spread the clients' phases
    while loop.time() < end:
        await asyncio.sleep(max(0.0, next_at - loop.time()))
        started = time.perf_counter()
        async with session.post(url, data=LIGHT, headers={"authorization": "Bearer light"}) as resp:
            await resp.content.readany()
            ttfts.append(time.perf_counter() - started)
            await resp.read()
        next_at += interval_s


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


async def phase(url: str, seconds: float, heavy: int, heavy_rps: float = 0.0,
                light_rps: float = 0.0) -> dict[str, Any]:
    ttfts: list[float] = []
    done: list[int] = []
    bases = [heavy_body(n) for n in range(heavy)]  # built before the clock runs; requests only swap MARK
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        end = asyncio.get_running_loop().time() + seconds
        interval = heavy / heavy_rps if heavy_rps else 0.0
        light_interval = LIGHT_CLIENTS / light_rps if light_rps else 0.0
        await asyncio.gather(*(light_client(session, url, end, ttfts, light_interval)
                               for _ in range(LIGHT_CLIENTS)),
                             *(heavy_client(session, url, end, n, bases[n], done, interval)
                               for n in range(heavy)))
    return {"light_ttft_p50_ms": pct(ttfts, 50) * 1000, "light_ttft_p99_ms": pct(ttfts, 99) * 1000,
            "light_requests": len(ttfts), "heavy_requests": len(done),
            "heavy_statuses": sorted(set(done))}


def two_phases(url: str, seconds: float, heavy_rps: float, light_rps: float = 0.0,
               pid: int | None = None) -> tuple[dict[str, Any], dict[str, Any], float]:
    """The light load alone (after a warm-up), then with 16 heavy clients; ``pid``'s CPU seconds in
    the second phase (light clients included, as they run beside the heavy ones)."""
    asyncio.run(phase(url, 1.0, 0, light_rps=light_rps))  # warm up (encodings, pools)
    alone = asyncio.run(phase(url, seconds, 0, light_rps=light_rps))
    cpu = cpu_seconds(pid) if pid else 0.0
    loaded = asyncio.run(phase(url, seconds, 16, heavy_rps, light_rps))
    return alone, loaded, (cpu_seconds(pid) - cpu) if pid else 0.0


def run(seconds: float, source_tree: str | None, heavy_rps: float = 0.0,
        direct: bool = True, light_rps: float = 0.0) -> dict[str, Any]:
    mock = start_mock()
    gateway: Server | None = None
    try:
        reference: dict[str, Any] = {}
        if direct:
            alone, loaded, _ = two_phases(mock.url + "/v1/chat/completions", seconds, heavy_rps, light_rps)
            reference = {"direct": {"baseline": alone, "with_16_heavy": loaded}}
        config = {"server": {"drain_s": 1, "grace_s": 0, "workers": 1},
                  "upstreams": {"mock": {"base_url": mock.url + "/v1", "api_key": "sk-bench"}},
                  "routes": [{"match": {"model": "*"}, "upstream": "mock"}], "ledger": {"enabled": False}}
        gateway = start_gateway("gateway", config, source_tree=source_tree)
        url = gateway.url + "/v1/chat/completions"
        baseline, heavy, heavy_cpu = two_phases(url, seconds, heavy_rps, light_rps, gateway.pid)
        out = {"seconds": seconds, "source_tree": source_tree or "this tree",
               "heavy_rps": heavy_rps or "max", "light_rps": light_rps or "max", "baseline": baseline,
               "with_16_heavy": heavy,
               "added_ttft_p99_ms": heavy["light_ttft_p99_ms"] - baseline["light_ttft_p99_ms"],
               "gateway_cpu_s_per_heavy_request": heavy_cpu / max(1, heavy["heavy_requests"]), **reference}
        if reference:
            loaded = reference["direct"]["with_16_heavy"]
            for p in ("p50", "p99"):
                out[f"added_by_gateway_under_load_{p}_ms"] = (heavy[f"light_ttft_{p}_ms"]
                                                              - loaded[f"light_ttft_{p}_ms"])
        return out
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
    parser.add_argument("--light-rps", type=float, default=0.0,
                        help="light streams per second in all, over 32 clients (default: back to back)")
    parser.add_argument("--no-direct", action="store_true", help="skip the phases straight to the mock")
    args = parser.parse_args()
    print(json.dumps(run(args.seconds, args.source_tree, args.heavy_rps, not args.no_direct, args.light_rps),
                     indent=2))


if __name__ == "__main__":
    main()
