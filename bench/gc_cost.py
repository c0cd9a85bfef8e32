"""CPU time the gateway spends in the cyclic garbage collector under load (thread CPU time, so a busy
machine does not inflate it).

Runs ``gateway serve`` (one gateway variant of ``bench.scenarios``) in a
process that times every collection with ``gc.callbacks``, drives it with the
bench load generator against the fake provider, stops it, and prints the
collections per generation and their total time per request. A request whose
objects form a reference cycle is only freed by the collector: the figure grows
with every such cycle, so it is how a cycle on the hot path shows.

    python -m bench.gc_cost --variant gw-all --seconds 10
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from bench import loadgen, procs
from bench.loadgen import LoadSpec
from bench.scenarios import CHAT_PATH, GATEWAYS, HEADERS, SMALL, gateway_config


def _serve(stats_path: str, argv: list[str]) -> int:
    """The measured process: ``gateway serve`` with a timer on every collection."""
    import gc

    from gateway.cli import main

    started: list[float] = []
    totals = {"collections": [0, 0, 0], "seconds": [0.0, 0.0, 0.0], "collected": 0}

    def timer(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started.append(time.thread_time())
        elif started:
            gen = info["generation"]
            totals["collections"][gen] += 1  # type: ignore[index]
            totals["seconds"][gen] += time.thread_time() - started.pop()  # type: ignore[index]
            totals["collected"] += info["collected"]  # type: ignore[operator]

    gc.callbacks.append(timer)
    try:
        return main(argv)
    finally:
        Path(stats_path).write_text(json.dumps(totals))


def measure(variant: str, seconds: float, concurrency: int, tree: str | None = None) -> dict[str, Any]:
    mock = procs.start_mock()
    tmp = Path(tempfile.mkdtemp(prefix="bench-gc-"))
    cfg_path, stats = tmp / "config.yaml", tmp / "gc.json"
    cfg_path.write_text(yaml.safe_dump(gateway_config(mock.url + "/v1", GATEWAYS[variant])))
    port = procs.free_port()
    argv = [sys.executable, __file__, "--serve", str(stats), "serve", "--config", str(cfg_path),
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    path = f"{tree}{os.pathsep}{procs.ROOT}" if tree else str(procs.ROOT)  # tree: a baseline checkout
    env = {**os.environ, "PYTHONPATH": path, "GATEWAY_LOG_LEVEL": "warning"}
    proc = subprocess.Popen(argv, env=env, cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = procs.Server(name=variant, proc=proc, port=port, log_path=tmp / "none", tmpdir=tmp)
    try:
        procs.wait_http(server, "/readyz", timeout=120.0)
        result = loadgen.run(LoadSpec(url=server.url + CHAT_PATH, body=SMALL, headers=HEADERS,
                                      concurrency=concurrency, duration_s=seconds, unique=True), "asyncio")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        mock.stop()
    totals = json.loads(stats.read_text())
    n = result.total_requests
    return {"requests": n, "gc_ms": sum(totals["seconds"]) * 1000,
            "gc_ms_per_15k": sum(totals["seconds"]) * 1000 * 15_000 / max(1, n),
            "collections": totals["collections"],
            "ms_by_generation": [round(v * 1000, 1) for v in totals["seconds"]],
            "collected_per_request": totals["collected"] / max(1, n)}


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--serve"]:
        return _serve(args[1], args[2:])
    p = argparse.ArgumentParser(prog="python -m bench.gc_cost", description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", default="gw-all", choices=sorted(GATEWAYS))
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--tree", help="serve the gateway from this source tree (a baseline checkout)")
    opts = p.parse_args(args)
    figures = measure(opts.variant, opts.seconds, opts.concurrency, opts.tree)
    rounded = {k: round(v, 3) if isinstance(v, float) else v for k, v in figures.items()}
    print(json.dumps({"variant": opts.variant, **rounded}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
