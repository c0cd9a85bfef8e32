"""Where the memory of open streams goes: RSS per idle stream, and with ``--trace`` who allocated it.

Starts the fake provider and one target (``bare`` or a gateway variant of ``bench.scenarios``), warms
it, opens ``--streams`` streams that stall after their first token (``IDLE_FAULT``: the gateway has
committed and relayed them, as in a real agent's long generation) and reads the server's RSS before
and after. With ``--trace`` the gateway runs under ``tracemalloc`` (slower, more memory: use it to
rank, not to measure) and the allocations still alive while the streams are open are summed per
package and per source line.

    python -m bench.idle_memory gw-default --streams 1000
    python -m bench.idle_memory gw-default --streams 1000 --trace
"""
from __future__ import annotations

import argparse
import collections
import os
import signal
import tempfile
import time
import tracemalloc
from pathlib import Path

from bench import loadgen, procs
from bench.loadgen import LoadSpec
from bench.runner import _release, _wait_ready
from bench.scenarios import CHAT_PATH, GATEWAYS, HEADERS, IDLE_FAULT, SMALL, STREAM, gateway_config

ROOT = str(Path(__file__).resolve().parent.parent)
# Loaded by the gateway process (``sitecustomize``) with --trace: a snapshot to a file on each SIGUSR1.
HOOK = """
import gc, os, signal, tracemalloc
tracemalloc.start(1)
_n = [0]
def _dump(sig, frame):
    gc.collect()
    tracemalloc.take_snapshot().dump(os.environ["IDLE_MEMORY_SNAPSHOT"] + "." + str(_n[0]))
    _n[0] += 1
signal.signal(signal.SIGUSR1, _dump)
"""


def start(target: str, snapshot: str | None) -> procs.Server:
    mock = procs.start_mock()
    if target == "bare":
        server = procs.start_bare(mock.url)
    else:
        env = None
        if snapshot is not None:
            hook_dir = os.path.dirname(snapshot)
            Path(hook_dir, "sitecustomize.py").write_text(HOOK)
            env = {"PYTHONPATH": f"{hook_dir}:{ROOT}", "IDLE_MEMORY_SNAPSHOT": snapshot}
        server = procs.start_gateway(target, gateway_config(mock.url + "/v1", GATEWAYS[target]), 1, env=env)
    server.meta["mock"] = mock
    return server


def snap(server: procs.Server, path: str) -> None:
    os.kill(server.pid, signal.SIGUSR1)
    deadline = time.monotonic() + 60
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)  # the dump is written in one go, but give it time to be closed


def measure(target: str, streams: int, trace: bool) -> None:
    snapshot = os.path.join(tempfile.mkdtemp(prefix="idle-memory-"), "snap") if trace else None
    server = start(target, snapshot)
    try:
        url = server.url + CHAT_PATH
        loadgen.run(LoadSpec(url=url, body=SMALL, headers=dict(HEADERS), concurrency=4, duration_s=1.0,
                             unique=True), prefer="asyncio")
        time.sleep(0.5)
        if snapshot is not None:
            snap(server, snapshot + ".0")
        rss0 = procs.rss_bytes(server.pid)
        idle = LoadSpec(url=url, body=STREAM, headers={**HEADERS, "x-mock-fault": IDLE_FAULT}, stream=True,
                        unique=True, idle=streams)
        holder = loadgen.open_idle(idle)
        opened, errors = _wait_ready(holder)
        time.sleep(1.0)
        rss1 = procs.rss_bytes(server.pid)
        if snapshot is not None:
            snap(server, snapshot + ".1")
        _release(holder)
        per = (rss1 - rss0) / max(opened, 1)
        print(f"{target}: {opened} streams open ({errors} errors), RSS {rss0 / 1e6:.1f} MB before, "
              f"+{(rss1 - rss0) / 1e6:.1f} MB with them open: {per / 1024:.1f} KB per stream")
        if snapshot is not None:
            report(snapshot, max(opened, 1))
    finally:
        server.stop()
        server.meta["mock"].stop()


def report(snapshot: str, streams: int) -> None:
    before = tracemalloc.Snapshot.load(snapshot + ".0")
    after = tracemalloc.Snapshot.load(snapshot + ".1")
    stats = after.compare_to(before, "lineno")
    by_package: collections.Counter[str] = collections.Counter()
    for stat in stats:
        by_package[_package(stat.traceback[0].filename)] += stat.size_diff
    print(f"traced: {sum(by_package.values()) / 1024 / streams:.2f} KB per stream")
    for name, size in by_package.most_common(15):
        print(f"  {size / 1024 / streams:6.2f} KB  {name}")
    print("largest sites:")
    for stat in stats[:30]:
        frame = stat.traceback[0]
        print(f"  {stat.size_diff / 1024 / streams:6.2f} KB {stat.count_diff / streams:5.1f} objects  "
              f"{_short(frame.filename)}:{frame.lineno}")


def _package(filename: str) -> str:
    if "site-packages/" in filename:
        return filename.split("site-packages/")[1].split("/")[0]
    if filename.startswith(ROOT):
        return filename[len(ROOT) + 1:]
    return "stdlib" if "/lib/python3" in filename else filename


def _short(filename: str) -> str:
    return filename.split("site-packages/")[-1] if "site-packages/" in filename else _package(filename)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", nargs="?", default="gw-default", help="bare, or a gateway variant")
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--trace", action="store_true", help="rank allocations with tracemalloc")
    args = parser.parse_args()
    measure(args.target, args.streams, args.trace)


if __name__ == "__main__":
    main()
