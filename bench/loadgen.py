"""Load generators: ``wrk`` when installed, else a built-in asyncio client in its own process.

Both are driven the same way (a ``LoadSpec``) and return the same ``LoadResult``,
so a scenario never cares which one ran. The asyncio client always runs in a
separate process (``python -m bench.loadgen SPEC_JSON``) so that it never shares
an interpreter or a core's time slice accounting with the server it measures; it
is the only one that can time a stream's first token, so streams and idle
streams always use it. A body template may contain ``NONCE``, replaced by a
random per-run prefix and a per-request counter, so that caches see distinct
requests when they must miss, across runs and repetitions too.
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

NONCE = b"NONCE"
_CONTENT = re.compile(rb'"(?:content|delta|text)":"[^"]')


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadSpec:
    url: str
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    method: str = "POST"
    concurrency: int = 1
    duration_s: float = 3.0
    warmup_s: float = 0.3
    stream: bool = False
    unique: bool = False  # replace NONCE in the body by a random per-run prefix and a counter
    idle: int = 0  # idle mode: open this many streams, wait for the first bytes, hold until told

    def to_json(self) -> str:
        d = asdict(self)
        d["body"] = self.body.decode()
        return json.dumps(d)

    @classmethod
    def from_json(cls, text: str) -> LoadSpec:
        d = json.loads(text)
        d["body"] = d["body"].encode()
        return cls(**d)


@dataclass(slots=True, kw_only=True)
class LoadResult:
    tool: str
    requests: int  # measured (after warm-up)
    total_requests: int  # including warm-up: what the server's CPU time is divided by
    errors: int
    elapsed_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    ttft_p50_ms: float | None = None
    ttft_p99_ms: float | None = None

    @property
    def rps(self) -> float:
        return self.requests / self.elapsed_s if self.elapsed_s > 0 else 0.0


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of an already sorted list (0.0 when empty)."""
    if not sorted_values:
        return 0.0
    rank = max(0, min(len(sorted_values) - 1, round(pct / 100.0 * len(sorted_values) + 0.5) - 1))
    return sorted_values[rank]


def _run_prefix() -> bytes:
    return secrets.token_hex(6).encode() + b"-"


def wrk_binary() -> str | None:
    return shutil.which("wrk")


def run(spec: LoadSpec, prefer: str = "auto") -> LoadResult:
    """Run one measurement; wrk for plain requests when present (``prefer``: auto|wrk|asyncio)."""
    if not spec.stream and not spec.idle and prefer != "asyncio" and wrk_binary():
        return run_wrk(spec)
    return run_asyncio(spec)


# --- wrk ---------------------------------------------------------------------------------------------

_WRK_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRKJSON {"requests":%d,"duration_us":%d,"errors":%d,"p50":%d,"p90":%d,"p99":%d,'
    .. '"mean":%f}\\n', summary.requests, summary.duration,
    e.connect + e.read + e.write + e.timeout + e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean))
end
"""


def _lua_string(data: bytes) -> str:
    level = "=" * 3
    while f"]{level}]" in data.decode():
        level += "="
    return f"[{level}[{data.decode()}]{level}]"


def _wrk_script(spec: LoadSpec) -> str:
    """A wrk Lua script for ``spec``; each call draws a new nonce prefix (never reused by another run)."""
    lines = [f'wrk.method = "{spec.method}"']
    for name, value in spec.headers.items():
        lines.append(f'wrk.headers["{name}"] = {_lua_string(value.encode())}')
    if spec.unique and NONCE in spec.body:
        prefix, suffix = spec.body.split(NONCE, 1)
        prefix += _run_prefix()
        lines += [f"local prefix = {_lua_string(prefix)}", f"local suffix = {_lua_string(suffix)}",
                  "local n = 0", "request = function()", "  n = n + 1",
                  "  return wrk.format(nil, nil, nil, prefix .. n .. suffix)", "end"]
    elif spec.body:
        lines.append(f"wrk.body = {_lua_string(spec.body)}")
    return "\n".join(lines) + "\n" + _WRK_DONE


def _wrk_once(spec: LoadSpec, script: Path, seconds: float) -> dict[str, Any]:
    threads = 1 if spec.concurrency < 8 else 2
    argv = [wrk_binary() or "wrk", f"-t{threads}", f"-c{spec.concurrency}", f"-d{max(1, round(seconds))}s",
            "--timeout", "30s", "-s", str(script), spec.url]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
    for line in out.stdout.splitlines():
        if line.startswith("WRKJSON "):
            return json.loads(line[8:])
    raise RuntimeError(f"wrk failed ({out.returncode}): {out.stdout[-500:]} {out.stderr[-500:]}")


def run_wrk(spec: LoadSpec) -> LoadResult:
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as tmp:
        warm_script, script = Path(tmp) / "warm.lua", Path(tmp) / "script.lua"
        warm_script.write_text(_wrk_script(spec))
        script.write_text(_wrk_script(spec))
        warm = _wrk_once(spec, warm_script, 1) if spec.warmup_s > 0 else {"requests": 0}
        d = _wrk_once(spec, script, spec.duration_s)
    elapsed = d["duration_us"] / 1e6
    return LoadResult(tool="wrk", requests=d["requests"], total_requests=d["requests"] + warm["requests"],
                      errors=d["errors"], elapsed_s=elapsed, p50_ms=d["p50"] / 1000, p90_ms=d["p90"] / 1000,
                      p99_ms=d["p99"] / 1000, mean_ms=d["mean"] / 1000)


# --- asyncio client (runs in a child process) -----------------------------------------------------------

def run_asyncio(spec: LoadSpec) -> LoadResult:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run(
        [sys.executable, "-m", "bench.loadgen", spec.to_json()],
        capture_output=True,
        text=True,
        timeout=spec.duration_s + spec.warmup_s + 120,
        env=env,
        check=False,
    )
    for line in out.stdout.splitlines():
        if line.startswith("LOADJSON "):
            return LoadResult(**json.loads(line[9:]))
    raise RuntimeError(f"loadgen failed ({out.returncode}): {out.stderr[-1500:]}")


def open_idle(spec: LoadSpec) -> subprocess.Popen[str]:
    """Start a child that holds ``spec.idle`` streams open; it prints ``READY <n> <errors>`` once all are.

    Write a line to its stdin to make it close them and exit.
    """
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.Popen([sys.executable, "-m", "bench.loadgen", spec.to_json()], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


class _Client:
    def __init__(self, spec: LoadSpec) -> None:
        import aiohttp

        self.spec = spec
        self.counter = 0
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, force_close=False),
            timeout=aiohttp.ClientTimeout(total=None, sock_read=120), skip_auto_headers=("User-Agent",))
        self.prefix, _, self.suffix = spec.body.partition(NONCE) if spec.unique else (spec.body, b"", b"")
        if spec.unique:
            self.prefix += _run_prefix()

    def body(self) -> bytes:
        if not self.spec.unique:
            return self.spec.body
        self.counter += 1
        return self.prefix + str(self.counter).encode() + self.suffix

    async def one(self) -> tuple[float, float | None, bool]:
        """(latency s, ttft s or None, ok) of one request, body read to its end."""
        start = time.perf_counter()
        ttft = None
        async with self.session.request(self.spec.method, self.spec.url, data=self.body() or None,
                                        headers=self.spec.headers) as resp:
            if self.spec.stream:
                async for chunk in resp.content.iter_any():
                    if ttft is None and _CONTENT.search(chunk):
                        ttft = time.perf_counter() - start
            else:
                await resp.read()
            return time.perf_counter() - start, ttft, resp.status < 400


async def _drive(spec: LoadSpec) -> dict[str, Any]:
    client = _Client(spec)
    lat: list[float] = []
    ttfts: list[float] = []
    counts = {"errors": 0, "total": 0}
    start = time.perf_counter()
    measure_from = start + spec.warmup_s
    stop_at = measure_from + spec.duration_s

    async def worker() -> None:
        while time.perf_counter() < stop_at:
            began = time.perf_counter()
            try:
                latency, ttft, ok = await client.one()
            except Exception:  # noqa: BLE001 - any failure is one error in the figures, never a crash
                latency, ttft, ok = 0.0, None, False
            counts["total"] += 1
            if began < measure_from:
                continue
            if not ok:
                counts["errors"] += 1
                continue
            lat.append(latency)
            if ttft is not None:
                ttfts.append(ttft)

    await asyncio.gather(*(worker() for _ in range(spec.concurrency)))
    elapsed = time.perf_counter() - measure_from
    await client.session.close()
    lat.sort()
    ttfts.sort()
    ms = 1000.0
    return asdict(LoadResult(
        tool="asyncio", requests=len(lat), total_requests=counts["total"], errors=counts["errors"],
        elapsed_s=elapsed, p50_ms=percentile(lat, 50) * ms, p90_ms=percentile(lat, 90) * ms,
        p99_ms=percentile(lat, 99) * ms, mean_ms=(sum(lat) / len(lat) * ms) if lat else 0.0,
        ttft_p50_ms=percentile(ttfts, 50) * ms if ttfts else None,
        ttft_p99_ms=percentile(ttfts, 99) * ms if ttfts else None))


async def _hold_idle(spec: LoadSpec) -> None:
    client = _Client(spec)
    opened: list[Any] = []
    errors = 0

    async def open_one() -> None:
        nonlocal errors
        try:
            resp = await client.session.request(
                spec.method, spec.url, data=client.body(), headers=spec.headers
            )
            await resp.content.readany()
            opened.append(resp)
        except Exception:  # noqa: BLE001 - counted and reported
            errors += 1

    await asyncio.gather(*(open_one() for _ in range(spec.idle)))
    print(f"READY {len(opened)} {errors}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    for resp in opened:
        resp.close()
    await client.session.close()


def main() -> None:
    spec = LoadSpec.from_json(sys.argv[1])
    try:
        import uvloop
    except ImportError:
        pass
    else:
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    if spec.idle:
        asyncio.run(_hold_idle(spec))
        return
    result = asyncio.run(_drive(spec))
    print("LOADJSON " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
