"""What observability costs per request: metrics on/off, tracing on/off, the ledger.

Starts the fake provider and one gateway per variant in this process (one
event loop: client, gateway and provider share it, so a per-request time is
the CPU all three spend), then times sequential requests to each, interleaved
in rounds so a noisy machine affects every variant alike. Reported per
variant: CPU time per request (process time: the machine may be shared, and
CPU spent is what the gateway costs), the gateway's share (minus the same
request sent straight to the provider) and its ratio to the baseline, plus
wall-clock mean and p99.

Variants: ``baseline`` (metrics off, tracing off, ledger off), ``metrics``
(the default: metrics on), ``metrics+tracing`` (OTLP/HTTP export with the batch
processor, to a local collector stub), ``metrics+ledger`` (SQLite).

A microbenchmark then times the per-request sinks alone on a finished
exchange (metrics sink; tracing spans start to finish), which is the direct
answer to "what does it add", free of network noise.

    python -m bench.observability                 # 2,000 requests per variant and kind
    python -m bench.observability -n 500 --rounds 5
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from gateway.mock import MockConfig, start_mock
from tests.support.exchange import build_exchange
from tests.support.servers import InProcessGateway, gateway_config, start_gateway

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "How do sidecars help agents?"}]}
KINDS = {"chat": {**CHAT}, "stream": {**CHAT, "stream": True}}
HEADERS = {"authorization": "Bearer sk-bench", "x-mock-tokens": "16"}


def variants(mock_url: str, otlp_url: str, tmp: Path) -> dict[str, dict[str, Any]]:
    common: dict[str, Any] = {"metrics": {"models": ["gpt-4o"]}}
    return {
        "baseline": {"metrics": {"enabled": False}},
        "metrics": common,
        "metrics+tracing": {**common, "tracing": {"enabled": True, "endpoint": otlp_url}},
        "metrics+ledger": {
            **common,
            "ledger": {"enabled": True, "sqlite_path": str(tmp / "bench-ledger.sqlite3")},
        },
    }


async def collector_stub() -> tuple[web.AppRunner, str, list[int]]:
    """Accepts OTLP/HTTP trace exports and counts them (so export really happens, over a socket)."""
    received: list[int] = []

    async def traces(request: web.Request) -> web.Response:
        received.append(len(await request.read()))
        return web.Response(body=b"", content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}/v1/traces", received


async def time_requests(session: aiohttp.ClientSession, url: str, body: dict[str, Any],
                        n: int) -> list[float]:
    """Wall seconds per request; the batch's process CPU seconds per request is appended last."""
    out: list[float] = []
    cpu0 = time.process_time()
    for _ in range(n):
        t0 = time.perf_counter()
        async with session.post(url + "/chat/completions", json=body, headers=HEADERS) as r:
            await r.read()
            assert r.status == 200, r.status
        out.append(time.perf_counter() - t0)
    await asyncio.sleep(0)  # let the last request's sinks run inside this batch's CPU window
    out.append((time.process_time() - cpu0) / n)
    return out


async def run(n: int, rounds: int, only: set[str] | None = None
              ) -> tuple[dict[str, dict[str, list[float]]], dict[str, dict[str, list[float]]]]:
    mock = await start_mock(MockConfig())
    collector, otlp_url, received = await collector_stub()
    tmp = Path(tempfile.mkdtemp(prefix="bench-obs-"))
    gateways: dict[str, InProcessGateway] = {}
    for name, overrides in variants(mock.url, otlp_url, tmp).items():
        if only is None or name in only or name == "baseline":
            gateways[name] = await start_gateway(gateway_config(mock.url, **overrides))
    targets = {"direct": mock.url + "/v1", **{name: gw.base_url for name, gw in gateways.items()}}
    times: dict[str, dict[str, list[float]]] = {t: {k: [] for k in KINDS} for t in targets}
    cpu: dict[str, dict[str, list[float]]] = {t: {k: [] for k in KINDS} for t in targets}
    per_round = max(1, n // rounds)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
        for url in targets.values():  # warm-up: pools, tokenizer, first-use imports
            for body in KINDS.values():
                await time_requests(session, url, body, 50)
        for _ in range(rounds):
            for target, url in targets.items():
                for kind, body in KINDS.items():
                    *wall, cpu_each = await time_requests(session, url, body, per_round)
                    times[target][kind] += wall
                    cpu[target][kind].append(cpu_each)
    for gw in gateways.values():
        await gw.close()
    await collector.cleanup()
    await mock.close()
    print(f"(OTLP exports received by the collector stub: {len(received)})")
    return times, cpu


def micro(iterations: int) -> dict[str, float]:
    """Microseconds per call of the per-request observability work on a finished exchange."""
    from types import SimpleNamespace

    from multidict import CIMultiDict, CIMultiDictProxy
    from prometheus_client import CollectorRegistry

    from gateway.config import parse_config
    from gateway.exchange import Attempt, Exchange, Usage
    from gateway.sse import StreamInspector
    from gateway.telemetry.metrics import Metrics, RequestMetrics
    from gateway.telemetry.metrics_sink import MetricsSink
    from policies.tracing.tracer import create_tracing

    def exchange() -> Exchange:
        ex = build_exchange(request_id="r", method="POST", path="/v1/chat/completions", operation="chat",
                            headers=CIMultiDictProxy(CIMultiDict()), raw_body=b"{}", body=dict(CHAT),
                            received_at=1.0, deadline=600.0, route_name="*", model="gpt-4o", upstream="mock",
                            upstream_model="gpt-4o", status=200, first_token_at=1.2, ended_at=2.0,
                            upstream_s=0.9, usage=Usage(prompt=20, completion=16))
        inspector = StreamInspector(lambda: 0.0)
        inspector.gaps = [0.01] * 15
        ex.view = inspector
        ex.record.attempts.append(Attempt(upstream="mock", model="gpt-4o", started=1.0, ended=2.0,
                                          outcome="ok", status=200))
        return ex

    metrics = Metrics({"gpt-4o"}, registry=CollectorRegistry())
    sink = MetricsSink(SimpleNamespace(metrics=metrics),
                       RequestMetrics.register(metrics))  # type: ignore[arg-type]
    exchanges = [exchange() for _ in range(iterations)]
    t0 = time.process_time()
    for ex in exchanges:
        sink(ex)
    metrics_us = (time.process_time() - t0) / iterations * 1e6
    cfg = parse_config(gateway_config("http://127.0.0.1:9/v1",
                                      tracing={"enabled": True, "exporter": "memory"}), {})
    tracing = create_tracing(cfg, time.monotonic, env={})
    assert tracing is not None
    exchanges = [exchange() for _ in range(iterations)]
    t0 = time.process_time()
    for ex in exchanges:
        tracing.start_request(ex)
        tracing.start_attempt(ex)
        tracing.finish(ex)
    tracing_us = (time.process_time() - t0) / iterations * 1e6
    tracing.exporter.clear()  # type: ignore[attr-defined]
    return {"metrics sink": metrics_us, "tracing (3 calls, in-memory export)": tracing_us}


def report(times: dict[str, dict[str, list[float]]], cpu: dict[str, dict[str, list[float]]]) -> None:
    """CPU per request is the median over rounds (robust to a neighbour's burst); wall figures are pooled."""
    cpu_med = {t: {k: statistics.median(v) for k, v in kinds.items()} for t, kinds in cpu.items()}
    direct = cpu_med["direct"]
    base = {k: cpu_med["baseline"][k] - direct[k] for k in direct}
    print(f"{'variant':18} {'kind':7} {'CPU us':>8} {'gateway CPU us':>14} {'vs baseline':>11} "
          f"{'wall mean ms':>12} {'wall p99 ms':>11}")
    for target, kinds in times.items():
        for kind, values in kinds.items():
            mean, p99 = statistics.fmean(values), sorted(values)[int(0.99 * (len(values) - 1))]
            added = cpu_med[target][kind] - direct[kind]
            share = "" if target == "direct" else f"{added * 1e6:14.1f}"
            ratio = "" if target == "direct" else f"{added / base[kind]:10.2f}x"
            print(f"{target:18} {kind:7} {cpu_med[target][kind] * 1e6:8.1f} {share:>14} {ratio:>11} "
                  f"{mean * 1e3:12.3f} {p99 * 1e3:11.3f}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.observability", description=__doc__.split("\n\n")[0])
    p.add_argument("-n", type=int, default=2000, help="requests per variant and kind")
    p.add_argument("--rounds", type=int, default=10,
                   help="interleaved rounds (noise spreads over all variants)")
    p.add_argument("--micro", type=int, default=20000, help="iterations of the sink microbenchmark")
    p.add_argument("--only", help="comma-separated variants besides baseline (default: all)")
    args = p.parse_args(argv)
    report(*asyncio.run(run(args.n, args.rounds, set(args.only.split(",")) if args.only else None)))
    print()
    for name, us in micro(args.micro).items():
        print(f"{name:40} {us:8.2f} us per request")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
