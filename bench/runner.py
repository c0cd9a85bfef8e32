"""Run scenarios: start what they need once, measure each target several times, keep medians.

Targets of one scenario are measured back to back, in a rotated order on each
repetition (reversed on every other one, so that no target always runs right after
the same neighbour), so slow drift on a shared machine (other processes, thermal
state, what the previous target left running) spreads over all of them; every
figure in the report is the median of the repetitions, and every comparison is made
between targets of the same run.
CPU per request is the target's process-tree CPU time (from ``/proc``) over the
requests it served, warm-up included.
"""
from __future__ import annotations

import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench import loadgen, peer_procs, procs
from bench.loadgen import LoadResult, LoadSpec
from bench.scenarios import CHAT_PATH, GATEWAYS, SMALL, Scenario, gateway_config

STATIC_ANSWER = (
    b'{"id":"chatcmpl-static","object":"chat.completion","created":1700000000,"model":"gpt-4o-mini",'
    b'"choices":[{"index":0,"message":{"role":"assistant","content":"Hello from the static answer."},'
    b'"finish_reason":"stop"}],"usage":{"prompt_tokens":20,"completion_tokens":7,"total_tokens":27}}'
)


@dataclass
class Measured:
    """One target's figures in one scenario (medians over repetitions)."""

    target: str
    reps: list[dict[str, Any]] = field(default_factory=list)

    def median(self, key: str) -> float | None:
        values = [r[key] for r in self.reps if r.get(key) is not None]
        return statistics.median(values) if values else None


@dataclass
class Env:
    """The running servers, started lazily and shared by every scenario."""

    loadgen: str = "auto"
    use_nginx: bool = True
    duration_s: float = 3.0
    reps: int = 3
    baseline: str | None = None  # another source tree: targets named "<variant>@base" run from it
    servers: dict[str, procs.Server] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def mock(self) -> procs.Server:
        if "mock" not in self.servers:
            self.servers["mock"] = procs.start_mock()
        return self.servers["mock"]

    @property
    def nginx(self) -> procs.Server | None:
        if not self.use_nginx:
            return None
        if "nginx" not in self.servers:
            server = procs.start_nginx(self.mock.url, STATIC_ANSWER)
            if server is None:
                self.use_nginx = False
                self.notes.append("nginx is not installed: the nginx and static columns are skipped.")
                return None
            self.servers["nginx"] = server
        return self.servers["nginx"]

    def gateway(self, variant: str, workers: int | None = 1, upstream: str | None = None) -> procs.Server:
        """A gateway variant; ``workers=None``: no ``--workers``, one worker per core as ``make run
        WORKERS=auto`` starts it (the workers then share state through the supervisor's host Redis)."""
        key = f"{variant}:w{workers or 'cores'}:{upstream or 'mock'}"
        if key not in self.servers:
            base = upstream or self.mock.url + "/v1"
            name, _, tree = variant.partition("@")
            self.servers[key] = procs.start_gateway(name, gateway_config(base, GATEWAYS[name]), workers,
                                                    source_tree=self.baseline if tree else None)
            started = len(procs.descendants(self.servers[key].pid))
            if workers is not None and workers > 1 and started < workers:
                self.notes.append(
                    f"`--workers {workers}` did not start {workers} processes: not implemented yet?"
                )
        return self.servers[key]

    def resolve(self, target: str) -> tuple[procs.Server, str, str] | None:
        """(server, url, method) of a target, or None when it cannot run here (nginx missing)."""
        name, _, variant = target.partition(":")
        if name == "direct":
            return self.mock, self.mock.url + CHAT_PATH, "POST"
        if name in ("nginx", "static"):
            ngx = self.nginx
            if ngx is None:
                return None
            return ngx, ngx.url + ("/static/v1/chat/completions" if name == "static" else CHAT_PATH), "POST"
        if name in peer_procs.PEERS:
            return self.peer(name)
        if name == "bare":
            if "bare" not in self.servers:
                self.servers["bare"] = procs.start_bare(self.mock.url)
            return self.servers["bare"], self.servers["bare"].url + CHAT_PATH, "POST"
        if variant == "healthz":
            gw = self.gateway(name)
            return gw, gw.url + "/healthz", "GET"
        if variant in ("w1", "w2"):
            ngx = self.nginx
            upstream = ngx.url + "/static/v1" if ngx is not None else None
            gw = self.gateway(name, int(variant[1:]), upstream)
            return gw, gw.url + CHAT_PATH, "POST"
        gw = self.gateway(name, None if variant == "cores" else 1)
        return gw, gw.url + CHAT_PATH, "POST"

    def peer(self, name: str) -> tuple[procs.Server, str, str] | None:
        """A peer gateway (``make bench-peers``), or None (column skipped) when it is not installed."""
        if name not in self.servers:
            server = peer_procs.start(name, self.mock.url)
            if server is None:
                self.notes.append(f"{name} is not installed (`make bench-peers`): its column is skipped.")
                return None
            self.servers[name] = server
        return self.servers[name], self.servers[name].url + CHAT_PATH, "POST"

    def forget_mock_requests(self) -> None:
        """The mock records every attempt with its body (10,000 kept):
        drop them so 50k-token prompts cost no GBs."""
        if "mock" in self.servers:
            req = urllib.request.Request(self.servers["mock"].url + "/_mock/requests", method="DELETE")
            with urllib.request.urlopen(req, timeout=10):
                pass

    def stop(self) -> None:
        for server in reversed(list(self.servers.values())):
            server.stop()


def measure_once(env: Env, scenario: Scenario, target: str) -> dict[str, Any] | None:
    resolved = env.resolve(target)
    if resolved is None:
        return None
    server, url, method = resolved
    body = scenario.body if method == "POST" else b""
    if scenario.kind == "workers":
        body = SMALL
    headers = peer_procs.request_headers(target, scenario.headers, env.mock.url) if method == "POST" else {}
    spec = LoadSpec(url=url, body=body, headers=headers, method=method,
                    concurrency=scenario.concurrency, duration_s=env.duration_s * scenario.duration_scale,
                    stream=scenario.stream, unique=scenario.unique)
    log_offset = server.log_path.stat().st_size if server.log_path.exists() else 0
    cpu0 = procs.cpu_seconds(server.pid)
    result: LoadResult = loadgen.run(spec, prefer=env.loadgen)
    cpu = procs.cpu_seconds(server.pid) - cpu0
    env.forget_mock_requests()
    row: dict[str, Any] = {
        "tool": result.tool, "requests": result.requests, "errors": result.errors, "rps": result.rps,
        "p50_ms": result.p50_ms, "p90_ms": result.p90_ms, "p99_ms": result.p99_ms, "mean_ms": result.mean_ms,
        "ttft_p50_ms": result.ttft_p50_ms, "ttft_p99_ms": result.ttft_p99_ms,
        "cpu_ms_per_req": cpu * 1000 / result.total_requests if result.total_requests else None,
        "rss_mb": procs.rss_bytes(server.pid) / 1e6,
    }
    if target.startswith("gw") and method == "POST":  # every scenario: a miss scenario must show 0 hits
        row.update(_cache_log_figures(server, log_offset))
    return row


def _cache_log_figures(server: procs.Server, offset: int) -> dict[str, Any]:
    """Share of cache hits, from the gateway's own request log lines.

    Their ``duration_ms`` is not used: the gateway's clock is the event loop's, which under uvloop
    moves in whole milliseconds. The in-gateway time of a hit is the hit's p50 minus
    ``/healthz``'s. """
    import orjson

    with server.log_path.open("rb") as f:
        f.seek(offset)
        data = f.read()
    hits = 0
    lines = 0
    for line in data.splitlines():
        if b'"event":"request"' not in line:
            continue
        lines += 1
        if orjson.loads(line).get("cache") == "hit":
            hits += 1
    return {"hit_ratio": hits / lines if lines else 0.0}


def rep_order(targets: list[str], rep: int) -> list[str]:
    """The targets' order in repetition ``rep``: rotated by ``rep // 2``, reversed on odd repetitions. A plain
    rotation kept every target's predecessor (gw-default always right after gw-off: stop 34 saw a c=1 bias
    between two trees that instructions did not show); reversing swaps each target's two neighbours."""
    shift = (rep // 2) % len(targets)
    order = targets[shift:] + targets[:shift]
    return order[::-1] if rep % 2 else order


def run_scenario(env: Env, scenario: Scenario) -> dict[str, Measured]:
    if scenario.kind == "idle":
        return run_idle(env, scenario)
    out: dict[str, Measured] = {t: Measured(t) for t in scenario.targets}
    targets = list(scenario.targets)
    for rep in range(env.reps):
        for target in rep_order(targets, rep):
            row = measure_once(env, scenario, target)
            if row is not None:
                out[target].reps.append(row)
            _progress(f"  {scenario.name} rep {rep + 1}/{env.reps} {target}: " + (
                f"{row['rps']:.0f}/s p50 {row['p50_ms']:.3f} ms" if row else "skipped"))
    return {t: m for t, m in out.items() if m.reps}


def run_idle(env: Env, scenario: Scenario,
             start: Callable[[Env, str], procs.Server] | None = None) -> dict[str, Measured]:
    """RSS per open stream: a fresh server per target (``start``: how a target's server is started), warmed,
    then ``idle_streams`` held open at once."""
    out: dict[str, Measured] = {}
    for target in scenario.targets:
        server = (start or _start_idle_target)(env, target)
        try:
            row = idle_figures(server, scenario)
            out[target] = Measured(target, [row])
            _progress(f"  idle {target}: {row['opened']} open ({row['errors']} errors), "
                      f"+{row['added_mb']:.1f} MB, {row['mb_per_1000']} MB per 1000")
        finally:
            server.stop()
    return out


def _start_idle_target(env: Env, target: str) -> procs.Server:
    if target == "bare":
        return procs.start_bare(env.mock.url)
    return procs.start_gateway(target, gateway_config(env.mock.url + "/v1", GATEWAYS[target]), 1)


def idle_figures(server: procs.Server, scenario: Scenario) -> dict[str, Any]:
    """The RSS ``scenario.idle_streams`` open streams add to a warmed ``server``."""
    url = server.url + CHAT_PATH
    loadgen.run(LoadSpec(url=url, body=SMALL, headers=scenario.headers, concurrency=4, duration_s=1.0,
                         unique=True), prefer="asyncio")
    time.sleep(0.5)
    rss0 = procs.rss_bytes(server.pid)
    holder = loadgen.open_idle(LoadSpec(url=url, body=scenario.body, headers=scenario.headers, stream=True,
                                        unique=True, idle=scenario.idle_streams))
    opened, errors = _wait_ready(holder)
    time.sleep(1.0)
    rss1 = procs.rss_bytes(server.pid)
    _release(holder)
    per_stream = (rss1 - rss0) / opened if opened else None
    return {
        "opened": opened,
        "errors": errors,
        "rss_before_mb": rss0 / 1e6,
        "rss_mb": rss1 / 1e6,
        "added_mb": (rss1 - rss0) / 1e6,
        "kb_per_stream": per_stream / 1024 if per_stream is not None else None,
        "mb_per_1000": per_stream * 1000 / 1e6 if per_stream is not None else None,
    }


def _wait_ready(holder: subprocess.Popen[str], timeout: float = 120.0) -> tuple[int, int]:
    assert holder.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = holder.stdout.readline()
        if line.startswith("READY "):
            _, opened, errors = line.split()
            return int(opened), int(errors)
        if not line and holder.poll() is not None:
            break
    holder.kill()
    raise RuntimeError(f"idle stream holder failed: {holder.stderr.read() if holder.stderr else ''}")


def _release(holder: subprocess.Popen[str]) -> None:
    assert holder.stdin is not None
    try:
        holder.stdin.write("close\n")
        holder.stdin.flush()
        holder.wait(60)
    except (OSError, subprocess.TimeoutExpired):
        holder.kill()


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
