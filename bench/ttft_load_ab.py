"""Interleaved A/B under concurrency: TTFT added p50/p99 and CPU per stream at c=N, short slices alternated.

``bench.overhead`` measures each target for seconds in turn, a few times; on a shared 2-core machine whose
load drifts, one target's c=32 p99 moves by more than the differences sought. Here every round runs a short
slice of the ``stream-c32`` load (50 ms to the first token, 20 chunks, unique prompts, N concurrent streams)
against each target in a shuffled order, and the figures are the medians over rounds of each slice's own
percentiles, plus the round-by-round difference of two targets:

    python -m bench.ttft_load_ab --targets gw-default,gw-default@base --baseline /tmp/base --rounds 12

A target is ``direct``, ``bare``, a ``bench.scenarios.GATEWAYS`` variant, or one of those ``@base`` (run from
``--baseline``). TTFT added = a slice's TTFT percentile minus ``direct``'s median of that percentile.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
from pathlib import Path

from bench import loadgen, procs
from bench.loadgen import LoadSpec
from bench.scenarios import CHAT_PATH, GATEWAYS, all_scenarios, gateway_config


def start(name: str, mock: procs.Server, baseline: str | None) -> procs.Server:
    if name == "direct":
        return mock
    if name == "bare":
        return procs.start_bare(mock.url)
    variant, _, tree = name.partition("@")
    return procs.start_gateway(name.replace("@", "-"), gateway_config(mock.url + "/v1", GATEWAYS[variant]), 1,
                               source_tree=baseline if tree else None)


def one_slice(server: procs.Server, concurrency: int, seconds: float) -> dict[str, float]:
    scenario = next(s for s in all_scenarios() if s.name == "stream-c32")
    spec = LoadSpec(url=server.url + CHAT_PATH, body=scenario.body, headers=scenario.headers,
                    concurrency=concurrency, duration_s=seconds, warmup_s=0.3, stream=True, unique=True)
    cpu0 = procs.cpu_seconds(server.pid)
    result = loadgen.run_asyncio(spec)
    cpu = procs.cpu_seconds(server.pid) - cpu0
    return {"p50": result.ttft_p50_ms or 0.0, "p99": result.ttft_p99_ms or 0.0, "rps": result.rps,
            "cpu_ms": cpu * 1000 / max(1, result.total_requests)}


def report(slices: dict[str, list[dict[str, float]]], pair: tuple[str, str] | None) -> str:
    direct = {q: statistics.median(s[q] for s in slices["direct"]) for q in ("p50", "p99")}
    lines = ["| target | slices | +TTFT p50 ms (median, range) | +TTFT p99 ms (median, range) "
             "| CPU ms/stream |", "|---|---|---|---|---|"]
    for name, rows in slices.items():
        cells = []
        for q in ("p50", "p99"):
            added = [r[q] - direct[q] for r in rows]
            cells.append(f"{statistics.median(added):.2f} ({min(added):.2f}..{max(added):.2f})")
        cpu = "-" if name == "direct" else f"{statistics.median(r['cpu_ms'] for r in rows):.3f}"
        lines.append(f"| {name} | {len(rows)} | {cells[0]} | {cells[1]} | {cpu} |")
    if pair is not None:
        a, b = (slices[name] for name in pair)
        for q in ("p50", "p99"):
            diffs = sorted(x[q] - y[q] for x, y in zip(a, b, strict=True))
            lower = sum(d < 0 for d in diffs)
            lines.append(f"\n{pair[0]} - {pair[1]}, TTFT {q} paired by round: median "
                         f"{statistics.median(diffs):+.2f} ms, lower in {lower}/{len(diffs)}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", required=True, help="comma-separated; direct is always measured")
    parser.add_argument("--baseline", help="the source tree of the @base targets")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--seconds", type=float, default=1.0, help="measured seconds per slice")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--json", help="also write every slice's figures here")
    args = parser.parse_args()
    names = ["direct", *[t for t in args.targets.split(",") if t != "direct"]]
    mock = procs.start_mock()
    servers: dict[str, procs.Server] = {}
    try:
        for name in names:
            servers[name] = start(name, mock, args.baseline)
        slices: dict[str, list[dict[str, float]]] = {name: [] for name in names}
        for r in range(args.rounds):
            order = names[:]
            random.shuffle(order)
            for name in order:
                slices[name].append(one_slice(servers[name], args.concurrency, args.seconds))
            print(f"round {r + 1}/{args.rounds}", flush=True)
        gws = [n for n in names if n not in ("direct", "bare")]
        print(report(slices, (gws[0], gws[1]) if len(gws) >= 2 else None))
        if args.json:
            Path(args.json).write_text(json.dumps(slices))
    finally:
        for server in servers.values():
            server.stop()


if __name__ == "__main__":
    main()
