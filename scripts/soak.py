"""`make soak MINUTES=N`: mixed traffic against a real gateway process, and what it holds over time.

The gateway under test runs in its own process (``python -m scripts.soak serve``: ``gateway serve`` plus
a sampler that writes its event loop's task count to a file every half second). This process runs the
fake provider and the clients: non-stream and stream chat, embeddings, cacheable repeats, a few bad
requests, 1% of requests reset by the provider (half before the headers, half mid-stream) and 1%
aborted by the client after the first event. Every ``--sample-s`` it records the gateway's RSS, open
files, event-loop tasks, connections in its upstream pool and sockets in CLOSE_WAIT. At the end it
waits for the gateway to go idle, checks that nothing grew after the warm-up and that no socket is
left in CLOSE_WAIT, prints the table and the verdict, and exits 1 when a check failed.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.mock import MockConfig, start_mock
from tests.hardening.procstats import close_wait, connections_to, open_fds, rss_bytes
from tests.support.servers import free_port, wait_ready

KEY = "sk-soak"
KINDS = (("reset", 0.01), ("abort", 0.01), ("bad", 0.005), ("embed", 0.10), ("cached", 0.10), ("stream", 0.385),
         ("chat", 0.39))


@dataclass(frozen=True, slots=True, kw_only=True)
class SoakConfig:
    minutes: float
    concurrency: int = 12
    rate: float = 200.0  # requests per second at most, all clients together (the machine is shared)
    sample_s: float = 5.0
    warmup_s: float = 40.0
    seed: int = 20240611


@dataclass(slots=True)
class Sample:
    t: float
    rss_mb: float
    fds: int
    tasks: int
    pool: int
    close_wait: int
    requests: int
    unexpected: int


@dataclass
class SoakReport:
    config: SoakConfig
    samples: list[Sample] = field(default_factory=list)
    idle_before: Sample | None = None
    idle_after: Sample | None = None
    counts: dict[str, int] = field(default_factory=dict)
    unexpected: list[str] = field(default_factory=list)
    exit_code: int | None = None
    workdir: Path | None = None  # the gateway's config, log and ledger: kept when the soak fails

    def cleanup(self) -> None:
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def problems(self) -> list[str]:
        """Every broken promise, in words (empty: the soak passed)."""
        out = [f"unexpected answers: {len(self.unexpected)} (first: {self.unexpected[:3]})"] if self.unexpected else []
        after = [s for s in self.samples if s.t >= self.config.warmup_s]
        if len(after) < 2 or self.idle_before is None or self.idle_after is None:
            return out + ["too few samples after the warm-up"]
        first, tail = after[0], after[len(after) * 2 // 3:]
        rss_growth = max(s.rss_mb for s in tail) - first.rss_mb
        if rss_growth > max(10.0, first.rss_mb * 0.1):
            out.append(f"RSS grew {rss_growth:.1f} MB after the warm-up ({first.rss_mb:.1f} MB)")
        idle, base = self.idle_after, self.idle_before
        # Open files follow the connections in use (clients in, pool out): bounded by the concurrency, not
        # by time. A leak shows here over a long run and, whatever its rate, in the idle check below.
        if max(s.fds for s in after) > base.fds + 2 * self.config.concurrency + 8:
            out.append(f"open files beyond what {self.config.concurrency} clients explain: "
                       f"{max(s.fds for s in after)} vs {base.fds} idle")
        if idle.tasks > base.tasks + 2:
            out.append(f"tasks did not return to idle: {idle.tasks} vs {base.tasks} before")
        if idle.fds > base.fds + self.config.concurrency + 4:
            out.append(f"open files did not return to idle: {idle.fds} vs {base.fds} before")
        if max(s.pool for s in self.samples) > 2 * self.config.concurrency + 4:
            out.append("more pool connections than concurrent requests")
        if idle.close_wait:
            out.append(f"{idle.close_wait} sockets left in CLOSE_WAIT")
        if self.exit_code != 0:
            out.append(f"gateway exit code {self.exit_code}")
        return out

    def table(self) -> str:
        head = f"{'t(s)':>6} {'RSS MB':>7} {'fds':>5} {'tasks':>6} {'pool':>5} {'CLOSE_WAIT':>10} {'requests':>9}"
        rows = [f"{s.t:6.0f} {s.rss_mb:7.1f} {s.fds:5d} {s.tasks:6d} {s.pool:5d} {s.close_wait:10d} {s.requests:9d}"
                for s in self.samples]
        idle = [f"idle before: {asdict(self.idle_before)}" if self.idle_before else "",
                f"idle after:  {asdict(self.idle_after)}" if self.idle_after else ""]
        return "\n".join([head, *rows, *idle, f"answers: {self.counts}"])


def gateway_config(mock_url: str, tmp: Path) -> dict[str, Any]:
    return {
        "server": {"drain_s": 5, "grace_s": 0, "workers": 1},
        "upstreams": {"mock": {"base_url": mock_url, "api_key": "sk-upstream",
                               "retry": {"max_attempts": 2, "base_delay_s": 0.01, "max_delay_s": 0.02},
                               "pool": {"max_connections": 64}}},
        "routes": [{"match": {"model": "*"}, "upstream": "mock"}],
        "auth": {"mode": "keys", "keys": [{"key": KEY, "tenant": "soak", "rpm": 10_000_000}]},
        "ledger": {"enabled": True, "sqlite_path": str(tmp / "ledger.sqlite3")},
        # Caps small enough to be reached during the warm-up: the soak then proves they hold.
        "cache": {"exact": {"max_bytes": 4 * 2**20}, "embeddings": {"max_bytes": 4 * 2**20}},
    }


class Traffic:
    """The clients: ``concurrency`` closed loops drawing request kinds with fixed odds."""

    def __init__(self, url: str, cfg: SoakConfig) -> None:
        self.url, self.cfg = url, cfg
        self.rng = random.Random(cfg.seed)
        self.counts: dict[str, int] = {}
        self.unexpected: list[str] = []
        self.done = 0
        self.stop = asyncio.Event()

    def kind(self) -> str:
        x, acc = self.rng.random(), 0.0
        for name, odds in KINDS:
            acc += odds
            if x < acc:
                return name
        return "chat"

    async def run(self) -> None:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {KEY}"}) as session:
            await asyncio.gather(*(self._loop(session, i) for i in range(self.cfg.concurrency)))

    async def _loop(self, session: aiohttp.ClientSession, worker: int) -> None:
        n = 0
        loop = asyncio.get_running_loop()
        interval = self.cfg.concurrency / self.cfg.rate
        next_at = loop.time() + worker * interval / self.cfg.concurrency
        while not self.stop.is_set():
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            next_at = max(next_at + interval, loop.time() - interval)  # no burst to catch up after a stall
            kind = self.kind()
            try:
                outcome = await self._one(session, kind, f"{worker}-{n}")
            except (TimeoutError, aiohttp.ClientError) as exc:
                outcome = f"client error {type(exc).__name__}"
            self.counts[f"{kind}:{outcome}"] = self.counts.get(f"{kind}:{outcome}", 0) + 1
            if not outcome.startswith("ok"):
                self.unexpected.append(f"{kind}: {outcome}")
            self.done += 1
            n += 1

    async def _one(self, session: aiohttp.ClientSession, kind: str, tag: str) -> str:
        chat = self.url + "/v1/chat/completions"
        msg = [{"role": "user", "content": f"soak {tag}"}]
        if kind == "bad":
            async with session.post(chat, data=b'{"model": "gpt-4o", "messages": [') as r:
                return "ok" if r.status == 400 else f"status {r.status}"
        if kind == "embed":
            async with session.post(self.url + "/v1/embeddings", json={"model": "text-embedding-3-small",
                                                                        "input": [f"soak {tag}"]}) as r:
                await r.read()
                return "ok" if r.status == 200 else f"status {r.status}"
        if kind in ("chat", "cached"):
            body: dict[str, Any] = {"model": "gpt-4o", "messages": msg, "max_tokens": 16}
            if kind == "cached":
                body.update(temperature=0, messages=[{"role": "user", "content": f"faq {self.rng.randrange(20)}"}])
            async with session.post(chat, json=body) as r:
                await r.read()
                return "ok" if r.status == 200 else f"status {r.status}"
        return await self._stream(session, kind, msg)

    async def _stream(self, session: aiohttp.ClientSession, kind: str, msg: list[dict[str, str]]) -> str:
        before = self.rng.random() < 0.5
        fault = {"x-mock-fault": "reset_before_headers" if before else "reset_after_chunks=3"} if kind == "reset" \
            else {}
        async with session.post(self.url + "/v1/chat/completions", headers=fault,
                                json={"model": "gpt-4o", "messages": msg, "stream": True, "max_tokens": 24}) as r:
            if kind == "reset" and before:
                await r.read()
                return "ok" if r.status == 502 else f"status {r.status}"  # retried, reset again: a clean 502
            if r.status != 200:
                return f"status {r.status}"
            if kind == "abort":
                await r.content.readline()
                r.close()  # the client goes away after the first event
                return "ok"
            text = (await r.read()).decode()
            if kind == "reset":
                return "ok" if "[DONE]" not in text and '"error"' in text else "reset ended like a clean stream"
            return "ok" if text.rstrip().endswith("data: [DONE]") else "stream without [DONE]"


def read_tasks(path: Path) -> int:
    try:
        return int(json.loads(path.read_text())["tasks"])
    except (OSError, ValueError, KeyError):
        return -1


def sample(t: float, pid: int, tasks_file: Path, upstream_port: int, traffic: Traffic | None) -> Sample:
    return Sample(t=round(t, 1), rss_mb=round(rss_bytes(pid) / 2**20, 1), fds=open_fds(pid),
                  tasks=read_tasks(tasks_file), pool=connections_to(pid, upstream_port), close_wait=close_wait(pid),
                  requests=traffic.done if traffic else 0, unexpected=len(traffic.unexpected) if traffic else 0)


async def wait_idle(pid: int, tasks_file: Path, target: int, timeout: float) -> None:
    """Until the gateway's task count is back to ``target`` (bounded: the verdict judges what is left)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and read_tasks(tasks_file) > target:
        await asyncio.sleep(0.25)
    await asyncio.sleep(1.0)  # one more sampler tick


async def run_soak(cfg: SoakConfig) -> SoakReport:
    report = SoakReport(cfg)
    mock = await start_mock(MockConfig(ttft_ms=5))
    tmp = report.workdir = Path(tempfile.mkdtemp(prefix="soak-"))
    (tmp / "config.yaml").write_text(yaml.safe_dump(gateway_config(mock.url, tmp)))
    port, tasks_file = free_port(), tmp / "tasks.json"
    argv = [sys.executable, "-m", "scripts.soak", "serve", "--config", str(tmp / "config.yaml"), "--port", str(port),
            "--tasks-file", str(tasks_file)]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=(tmp / "gateway.log").open("wb"),  # noqa: ASYNC220 (no wait)
                            stderr=subprocess.STDOUT)
    try:
        await wait_ready(f"http://127.0.0.1:{port}")
        url = f"http://127.0.0.1:{port}"
        warm = Traffic(url, SoakConfig(minutes=0, concurrency=4, rate=cfg.rate, seed=1))
        warm_task = asyncio.create_task(warm.run())
        await asyncio.sleep(3.0)
        warm.stop.set()
        await warm_task
        await wait_idle(proc.pid, tasks_file, 0, 3.0)
        report.idle_before = sample(0, proc.pid, tasks_file, mock.port, None)
        traffic = Traffic(url, cfg)
        runner = asyncio.create_task(traffic.run())
        started = time.monotonic()
        while time.monotonic() - started < cfg.minutes * 60:
            await asyncio.sleep(min(cfg.sample_s, max(0.0, cfg.minutes * 60 - (time.monotonic() - started))))
            report.samples.append(sample(time.monotonic() - started, proc.pid, tasks_file, mock.port, traffic))
        traffic.stop.set()
        await runner
        await wait_idle(proc.pid, tasks_file, report.idle_before.tasks, 10.0)
        report.idle_after = sample(time.monotonic() - started, proc.pid, tasks_file, mock.port, traffic)
        report.counts, report.unexpected = dict(sorted(traffic.counts.items())), traffic.unexpected
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            report.exit_code = await asyncio.to_thread(proc.wait, 20)
        except subprocess.TimeoutExpired:
            proc.kill()
            report.exit_code = proc.wait()
        await mock.close()
    return report


def serve(config_path: str, port: int, tasks_file: str) -> int:
    """The gateway under test, with a sampler of its event loop's task count."""
    from gateway.cli import _install_uvloop
    from gateway.config import load_config
    from gateway.server import serve as gateway_serve
    from gateway.telemetry.logging import setup_logging

    config = load_config(config_path)
    setup_logging("warning")
    _install_uvloop()

    async def main() -> int:
        async def sampler() -> None:
            path, tmp = Path(tasks_file), Path(tasks_file + ".tmp")
            while True:
                tmp.write_text(json.dumps({"tasks": len(asyncio.all_tasks()) - 1}))  # minus the sampler
                os.replace(tmp, path)
                await asyncio.sleep(0.5)

        task = asyncio.create_task(sampler())
        try:
            return await gateway_serve(config, host="127.0.0.1", port=port, config_path=config_path)
        finally:
            task.cancel()

    return asyncio.run(main())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.soak", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command")
    srv = sub.add_parser("serve", help="(internal) the gateway under test")
    srv.add_argument("--config", required=True)
    srv.add_argument("--port", type=int, required=True)
    srv.add_argument("--tasks-file", required=True)
    parser.add_argument("--minutes", type=float, default=float(os.environ.get("MINUTES", "10")))
    parser.add_argument("--concurrency", type=int, default=12)
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second, all clients together")
    parser.add_argument("--sample-s", type=float, default=5.0)
    parser.add_argument("--warmup-s", type=float, default=None, help="default: a third of the run, at most 120 s")
    parser.add_argument("--json", help="write the samples and the verdict here")
    args = parser.parse_args(argv)
    if args.command == "serve":
        return serve(args.config, args.port, args.tasks_file)
    warmup = args.warmup_s if args.warmup_s is not None else min(120.0, args.minutes * 60 / 3)
    cfg = SoakConfig(minutes=args.minutes, concurrency=args.concurrency, rate=args.rate, sample_s=args.sample_s,
                     warmup_s=warmup)
    report = asyncio.run(run_soak(cfg))
    problems = report.problems()
    print(report.table())
    print("verdict:", "PASS" if not problems else "FAIL\n  " + "\n  ".join(problems))
    if args.json:
        Path(args.json).write_text(json.dumps({"samples": [asdict(s) for s in report.samples],
                                               "counts": report.counts, "problems": problems}, indent=1))
    if problems:
        print(f"gateway log and ledger kept in {report.workdir}")
        return 1
    report.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
