"""Instructions per request of an in-process gateway, counted by valgrind (callgrind): a figure the
machine's load does not move, for A/B runs on a shared machine where CPU-time figures vary by 10-20%.

Each measurement is a child process under ``valgrind --tool=callgrind --instr-atstart=no``: it serves one
gateway variant of ``bench.scenarios`` in front of the fake provider (``start_gateway``, as the tests do,
then ``settle_memory`` as ``gateway serve`` does), drives it from a client subprocess (unique
deterministic requests: every one a cache miss that is stored), warms up, and counts only the measured
requests (``callgrind_control -i on/off`` around them). Every measured process runs with one hash seed
(``PYTHONHASHSEED=0`` unless the caller sets another): runs of the same tree then differ by <0.1% (with
random seeds, 1-3%).
Instructions are not time (a cache miss costs more than an add), but a change that executes less code
shows here without the noise.

    python -m bench.instr_cost --variants gw-off,gw-default --kinds small,stream --baseline /tmp/base

Needs ``valgrind`` (``apt-get install valgrind``); ~20 s per measurement. The children run this file by
its path, so a baseline tree without it is measured by the same harness. ``stream`` is the fake provider's
default answer streamed (16 tokens: 19 events), which reaches the gateway in one or two reads; ``stream20``
is a paced stream of 20 tokens (the mock waits 20 ms between content chunks, so even under valgrind each
arrives in its own read): per-chunk work counts 20 times, as in ``bench.overhead``'s stream scenarios.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Protocol

from aiohttp import web

from bench import procs
from bench.scenarios import CHAT_PATH, GATEWAYS, HEADERS, chat_body, gateway_config

ROOT = Path(__file__).resolve().parents[1]
_RUN_FILE = "import runpy, sys; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
_COLLECTED = re.compile(r"Collected\s*:\s*([\d,]+)")


PACED = {"x-mock-fault": "ttft_ms=0;tokens_per_s=50", "x-mock-tokens": "20"}  # the ``stream20`` kind


async def client(url: str, kind: str, concurrency: int = 1) -> None:
    """Reads a count per stdin line, sends that many unique requests (``concurrency`` at a time), answers
    ``done``."""
    import aiohttp

    loop = asyncio.get_running_loop()
    sent = [0]
    stream = kind.startswith("stream")
    headers = {**HEADERS, **PACED} if kind == "stream20" else HEADERS

    async def worker(session: aiohttp.ClientSession, count: int) -> None:
        while sent[0] < count:
            sent[0] += 1
            body = chat_body(f"NONCE {os.getpid()} {sent[0]}", stream=stream, max_tokens=None)
            async with session.post(url + CHAT_PATH, data=body, headers=headers) as resp:
                await resp.read()
                if resp.status != 200:
                    raise SystemExit(f"status {resp.status}")

    async with aiohttp.ClientSession() as session:
        while (line := await loop.run_in_executor(None, sys.stdin.readline)).strip():
            target = sent[0] + int(line)
            await asyncio.gather(*(worker(session, target) for _ in range(concurrency)))
            sys.stdout.write("done\n")
            sys.stdout.flush()


class Served(Protocol):
    url: str

    async def close(self) -> None: ...


class _Bare:
    """``bench/bare_relay.py`` served in this process, as ``start_gateway`` serves the gateway."""

    def __init__(self, runner: web.AppRunner, port: int) -> None:
        self.runner, self.url = runner, f"http://127.0.0.1:{port}"

    async def close(self) -> None:
        await self.runner.cleanup()


async def start_target(upstream: str, variant: str) -> Served:
    """The gateway variant (or ``bare``: the bare relay) listening on loopback."""
    from tests.support.servers import bound_socket, start_gateway

    if variant == "bare":
        from bench.bare_relay import build_app

        runner = web.AppRunner(build_app(upstream.removesuffix("/v1"), 2048), access_log=None,
                               handler_cancellation=True)
        await runner.setup()
        sock = bound_socket()
        await web.SockSite(runner, sock).start()
        return _Bare(runner, sock.getsockname()[1])
    from gateway.server import settle_memory

    gw = await start_gateway(gateway_config(upstream, GATEWAYS[variant]))
    settle_memory()
    return gw


async def serve(upstream: str, variant: str, kind: str, warmup: int, n: int, concurrency: int = 1) -> None:
    """The measured process: the target, counted only while the client's ``n`` requests run."""
    gw = await start_target(upstream, variant)
    child = await asyncio.create_subprocess_exec(
        *self_argv("--client", gw.url, "--kinds", kind, "--concurrency", str(concurrency)),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE)
    stdin, stdout = child.stdin, child.stdout
    assert stdin is not None and stdout is not None

    async def batch(count: int) -> None:
        stdin.write(f"{count}\n".encode())
        await stdin.drain()
        if (await stdout.readline()).strip() != b"done":
            raise SystemExit("the client failed")

    await batch(warmup)
    toggle(True)
    await batch(n)
    toggle(False)
    stdin.write(b"\n")
    await child.wait()
    await gw.close()


def self_argv(*args: str) -> list[str]:
    """This file run by path (``-m bench.instr_cost`` would find the measured tree's bench package)."""
    return [sys.executable, "-c", _RUN_FILE, str(Path(__file__).resolve()), *args]


def toggle(on: bool) -> None:
    subprocess.run(["callgrind_control", "-i", "on" if on else "off", str(os.getpid())],
                   capture_output=True, check=False)


def measure(tree: Path, upstream: str, variant: str, kind: str, warmup: int, n: int,
            concurrency: int = 1, log: bool = False) -> float:
    """Instructions per request of ``tree`` (its own checkout on PYTHONPATH)."""
    argv = ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--callgrind-out-file=/dev/null",
            *self_argv("--serve", upstream, "--variants", variant, "--kinds", kind, "--warmup", str(warmup),
                       "--requests", str(n), "--concurrency", str(concurrency), *(["--log"] if log else []))]
    # One hash seed for every measured process: with a random one (Python's default) the same tree read
    # 1170-1198k instructions per small request from run to run (dict and set probe lengths follow the seed);
    # with a fixed one two runs differ by <0.1% (1180.4k and 1180.9k). PYTHONHASHSEED set by the caller wins.
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONHASHSEED": os.environ.get("PYTHONHASHSEED", "0")}
    out = subprocess.run(argv, cwd=tree, env=env, capture_output=True, text=True, check=False)
    found = _COLLECTED.search(out.stderr)
    if found is None:
        raise SystemExit(f"no count for {tree} {variant} {kind}:\n{out.stderr[-2000:]}")
    return int(found.group(1).replace(",", "")) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default="gw-off,gw-default,gw-all",
                        help="gateway variants of bench.scenarios, and/or bare (bench/bare_relay.py)")
    parser.add_argument("--kinds", default="small,stream", help="small (chat), stream and/or stream20")
    parser.add_argument("--baseline", help="a baseline source tree, measured alternately with this one")
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=1, help="requests in flight at once")
    parser.add_argument("--log", action="store_true",
                        help="write the request log line (to /dev/null) as gateway serve does")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--client", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        asyncio.run(client(args.client, args.kinds, args.concurrency))
        return
    if args.serve:
        import uvloop

        if args.log:  # the request log line written as ``gateway serve`` writes it, to /dev/null
            from gateway.telemetry.logging import setup_logging

            setup_logging("info", stream=open(os.devnull, "w"))  # noqa: SIM115 (lives as long as the process)
        uvloop.run(serve(args.serve, args.variants, args.kinds, args.warmup, args.requests, args.concurrency))
        return
    trees = {"this": ROOT, **({"base": Path(args.baseline).resolve()} if args.baseline else {})}
    mock = procs.start_mock()
    try:
        for kind in args.kinds.split(","):
            for variant in args.variants.split(","):
                counts = {name: measure(tree, mock.url + "/v1", variant, kind, args.warmup, args.requests,
                                        args.concurrency, args.log) for name, tree in trees.items()}
                delta = f" ({counts['this'] / counts['base'] - 1:+.1%} vs base)" if "base" in counts else ""
                figures = "  ".join(f"{name}: {count / 1000:8.1f}k" for name, count in counts.items())
                print(f"{kind:6s} {variant:12s} {figures} instructions per request{delta}", flush=True)
    finally:
        mock.stop()


if __name__ == "__main__":
    main()
