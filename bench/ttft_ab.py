"""Interleaved A/B of one stream at a time: TTFT added and CPU per stream, this tree vs a baseline tree.

``bench.overhead`` measures each target for seconds in turn; on a shared machine whose load drifts, a
difference of tens of microseconds drowns in that drift. Here every round sends one stream (the
``stream-c1`` scenario: 50 ms to the first token, 20 chunks) to each target in a shuffled order, so the
targets share the machine's state request by request:

    python -m bench.ttft_ab --baseline /tmp/base --rounds 400 --variant gw-default

TTFT added = the target's median time to the first content chunk minus the provider's own (``direct``);
CPU per stream = the target process's CPU time (``/proc``, scheduler ns) from just before each of its
streams to ``SETTLE_S`` after its last byte (its idle time while the other targets run is not counted).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench import procs
from bench.loadgen import _CONTENT
from bench.scenarios import CHAT_PATH, GATEWAYS, STREAM, STREAM_FAULT, gateway_config

SETTLE_S = 0.003
HEADERS = {"content-type": "application/json", "authorization": "Bearer sk-bench-client",
           "x-mock-fault": STREAM_FAULT, "x-mock-tokens": "20"}


async def one(session: aiohttp.ClientSession, url: str, n: int) -> float:
    """Seconds to the first content chunk of one unique stream, read to its end."""
    body = STREAM.replace(b"NONCE", f"ab{time.time_ns()}-{n}".encode())
    start = time.perf_counter()
    ttft = 0.0
    async with session.post(url + CHAT_PATH, data=body, headers=HEADERS) as resp:
        async for chunk in resp.content.iter_any():
            if not ttft and _CONTENT.search(chunk):
                ttft = time.perf_counter() - start
        assert resp.status == 200, resp.status
    return ttft


async def drive(targets: dict[str, procs.Server], rounds: int, warmup: int) -> dict[str, Any]:
    ttfts: dict[str, list[float]] = {name: [] for name in targets}
    cpu = dict.fromkeys(targets, 0.0)
    async with aiohttp.ClientSession() as session:
        for r in range(warmup + rounds):
            order = list(targets)
            random.shuffle(order)
            for name in order:
                pid = targets[name].pid
                before = procs.cpu_seconds(pid)
                ttft = await one(session, targets[name].url, r)
                await asyncio.sleep(SETTLE_S)  # the request's work after its last byte (log line, ledger)
                if r >= warmup:
                    ttfts[name].append(ttft)
                    cpu[name] += procs.cpu_seconds(pid) - before
    return {"ttft": ttfts, "cpu_s": cpu}


def paired(a: list[float], b: list[float]) -> str:
    """Median of the round-by-round differences a - b in ms, with the share of rounds where a was faster."""
    diffs = sorted((x - y) * 1000 for x, y in zip(a, b, strict=True))
    faster = sum(d < 0 for d in diffs) / len(diffs)
    return f"{statistics.median(diffs):+.3f} ms (a faster in {faster:.0%} of rounds)"


def report(figures: dict[str, Any], rounds: int, variant: str) -> str:
    ttft, cpu = figures["ttft"], figures["cpu_s"]
    direct = statistics.median(ttft["direct"]) * 1000
    bare_cpu = cpu["bare"] / rounds * 1000
    lines = ["| target | TTFT p50 ms | +TTFT p50 ms | CPU ms/stream | x bare CPU |", "|---|---|---|---|---|"]
    for name in ttft:
        p50 = statistics.median(ttft[name]) * 1000
        if name == "direct":  # the provider serves every target's upstream call: its CPU is not one stream's
            lines.append(f"| {name} | {p50:.3f} | 0.000 | - | - |")
            continue
        per = cpu[name] / rounds * 1000
        lines.append(f"| {name} | {p50:.3f} | {p50 - direct:.3f} | {per:.3f} | {per / bare_cpu:.2f} |")
    lines.append(f"\nTTFT {variant} - {variant}@base, paired by round: "
                 + paired(ttft[variant], ttft[variant + "@base"]))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", required=True, help="the baseline source tree (a checkout)")
    parser.add_argument("--variant", default="gw-default", choices=sorted(GATEWAYS))
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--json", help="also write the raw samples here")
    args = parser.parse_args()
    mock = procs.start_mock()
    started = [mock]
    try:
        cfg = gateway_config(mock.url + "/v1", GATEWAYS[args.variant])
        targets = {"direct": mock, "bare": procs.start_bare(mock.url)}
        started.append(targets["bare"])
        targets[args.variant] = procs.start_gateway(args.variant, cfg)
        started.append(targets[args.variant])
        targets[args.variant + "@base"] = procs.start_gateway(args.variant + "-base", cfg,
                                                              source_tree=args.baseline)
        started.append(targets[args.variant + "@base"])
        figures = asyncio.run(drive(targets, args.rounds, args.warmup))
        print(report(figures, args.rounds, args.variant))
        if args.json:
            Path(args.json).write_text(json.dumps(figures))
    finally:
        for server in started:
            server.stop()


if __name__ == "__main__":
    main()
