"""Loop CPU of each per-chunk stage of a relayed stream, in this process: ``python -m bench.stream_passes``.

Two streams from the fake provider (``gateway mock-upstream``'s answer, OpenAI's padding included, with the
usage chunk the usage layer asks for): a 15,000-token answer (4.4 MB, issue 15's unread streams) in the
blocks a fast upstream's reads give (``--block``, 64 KiB: the raw client's reader pauses past that), and a
20-token answer one event a chunk (issue 21's ``stream20``). Each stage of the default config's chain is
timed alone on the chunks the stage sees (best of 5): the usage stripper (on the upstream's chunks), the
stream inspector (on the stripped chunks, as the relay feeds it), the cache fill's ``keep`` and the whole
chain of ``Observed`` wrappers as the layers build it, driven by an async loop as the relay drives it.
With ``--baseline TREE`` the same is run in a child process on that source tree (same run, alternately).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import time
import timeit
from collections.abc import Callable
from pathlib import Path

from gateway.body import Chunks, Observed
from gateway.exchange import Exchange
from gateway.produced import Capture
from gateway.sse import StreamInspector
from policies.cache.fill import Fill, FillBudget
from policies.usage import layer as usage_layer
from policies.usage.layer import UsageStripper
from tests.support.exchange import build_exchange

PIECE_BYTES: int = getattr(usage_layer, "PIECE_BYTES", 0)
_ID = "chatcmpl-88d2f60080bb825510e061cf"
_HEAD = ('{"id":"' + _ID + '","object":"chat.completion.chunk","created":1796687163,"model":"gpt-4o",'
         '"system_fingerprint":"fp_mock0001","service_tier":"default","choices":[{"index":0,"delta":')
_WORDS = ("Fox", " canyon", " simple", " river", " stone", " quiet", " amber", " field")
_PAD = "kQ7vXa2LmZ9pR"


def event(delta: str, finish: str = "null", n: int = 0) -> bytes:
    pad = _PAD[: 1 + n % 12]
    return (f'data: {_HEAD}{delta},"logprobs":null,"finish_reason":{finish}}}],"usage":null,'
            f'"obfuscation":"{pad}"}}\n\n').encode()


def answer(tokens: int) -> list[bytes]:
    """The fake provider's stream with usage, one event each."""
    events = [event('{"role":"assistant","content":""}')]
    events += [event('{"content":"' + _WORDS[i % len(_WORDS)] + '"}', n=i) for i in range(tokens)]
    events.append(event("{}", '"stop"'))
    usage = f'{{"prompt_tokens":6,"completion_tokens":{tokens},"total_tokens":{tokens + 6}}}'
    events.append(('data: {"id":"' + _ID + '","object":"chat.completion.chunk","created":1796687163,'
                   '"model":"gpt-4o","choices":[],"usage":' + usage + '}\n\n').encode())
    events.append(b"data: [DONE]\n\n")
    return events


def blocks(events: list[bytes], size: int) -> list[bytes]:
    """The events joined and cut every ``size`` bytes (a read ends anywhere, mid-event too)."""
    data = b"".join(events)
    return [data[at:at + size] for at in range(0, len(data), size)]


def best(fn: Callable[[], object], number: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=5)) / number


def stripped(chunks: list[bytes]) -> list[bytes]:
    stripper = UsageStripper(build_exchange(), Capture(sse=True))
    out = [stripper.chunk(c) for c in chunks]
    return [c for c in out if c] + ([rest] if (rest := stripper.flush()) else [])


def stages(chunks: list[bytes]) -> dict[str, Callable[[], None]]:
    """Each stage, run on one stream's chunks."""
    ex = build_exchange()  # not per run: building one costs more than a short stream's stripping

    def strip() -> None:
        stripper = UsageStripper(ex, Capture(sse=True))
        for c in chunks:
            stripper.chunk(c)

    out = stripped(chunks)

    def inspect() -> None:
        view = StreamInspector(clock=time.monotonic)
        for c in out:
            view.feed(c)

    def inspect_vouched() -> None:  # as behind the usage stripper, which proves its output has no usage key
        view = StreamInspector(clock=time.monotonic)
        vouch = hasattr(view, "vouched")  # a tree without it: as ``inspect``
        for c in out:
            if vouch:
                view.vouched = c
            view.feed(c)

    def keep() -> None:
        fill = Fill(operation="chat", sse=True, limit=1 << 30, budget=FillBudget(max_bytes=1 << 30))
        for c in chunks:
            fill.keep(c)
        fill.release()

    def chain() -> None:
        loop = asyncio.new_event_loop()
        loop.run_until_complete(_relay(ex, chunks))
        loop.close()

    return {"stripper": strip, "inspector": inspect, "vouched": inspect_vouched, "fill.keep": keep,
            "chain": chain, "noop": lambda: None}


def stage_times(chunks: list[bytes], number: int) -> dict[str, float]:
    """Seconds per stream of each stage."""
    return {name: best(fn, number) for name, fn in stages(chunks).items()}


async def _relay(ex: Exchange, chunks: list[bytes]) -> None:
    """The default config's wrappers (cache fill, then usage stripping outermost) and the inspector, driven
    as the relay drives them (no writes)."""
    fill = Fill(operation="chat", sse=True, limit=1 << 30, budget=FillBudget(max_bytes=1 << 30))
    body = Observed(Chunks(list(chunks)), on_chunk=fill.keep)
    stripper = UsageStripper(ex, Capture(sse=True))
    pieces = {"piece_bytes": PIECE_BYTES} if PIECE_BYTES else {}  # as the usage layer builds it
    body = Observed(body, on_chunk=stripper.chunk, flush=stripper.flush, **pieces)
    view = ex.view = StreamInspector(clock=time.monotonic)
    async for chunk in body:
        view.feed(chunk)
    fill.release()


def streams(block: int) -> dict[str, list[bytes]]:
    return {"4.4MB in blocks": blocks(answer(15_000), block), "20 events, one a chunk": answer(20)}


def run_here(block: int) -> dict[str, dict[str, float]]:
    long, short = streams(block).values()
    mb = sum(map(len, long)) / 1e6
    return {"4.4MB in blocks (ms per MB)": {k: v * 1e3 / mb for k, v in stage_times(long, 3).items()},
            "20 events, one a chunk (us per stream)":
                {k: v * 1e6 for k, v in stage_times(short, 300).items()}}


_COLLECTED = re.compile(r"Collected\s*:\s*([\d,]+)")


def count_here(block: int, case: str, stage: str, number: int) -> None:
    """Run one stage ``number`` times with valgrind's instrumentation on (``--instr``'s child)."""
    fn = stages(streams(block)[case])[stage]
    fn()  # warm: imports, caches
    toggle(True)
    for _ in range(number):
        fn()
    toggle(False)


def toggle(on: bool) -> None:
    subprocess.run(["callgrind_control", "-i", "on" if on else "off", str(os.getpid())],
                   capture_output=True, check=False)


def instructions(tree: str, block: int, case: str, stage: str, number: int) -> float:
    """Instructions per stream of one stage, counted by callgrind (load does not move them)."""
    argv = ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--callgrind-out-file=/dev/null",
            sys.executable, str(Path(__file__).resolve()), "--count", case, stage, str(number),
            "--block", str(block)]
    env = {**os.environ, "PYTHONPATH": tree, "PYTHONHASHSEED": "0"}
    out = subprocess.run(argv, cwd=tree, env=env, capture_output=True, text=True, check=False)
    found = _COLLECTED.search(out.stderr)
    if found is None:
        raise SystemExit(f"no count for {tree} {case} {stage}:\n{out.stderr[-2000:]}")
    return int(found.group(1).replace(",", "")) / number


def count_all(trees: dict[str, str], block: int, names: list[str]) -> None:
    """Instructions per stream of each stage, less those of an empty stage (the toggles' own work)."""
    for case, number in (("4.4MB in blocks", 2), ("20 events, one a chunk", 50)):
        print(f"{case} (thousand instructions per stream)")
        empty = {name: instructions(tree, block, case, "noop", number) for name, tree in trees.items()}
        for stage in names:
            counts = {name: instructions(tree, block, case, stage, number) - empty[name]
                      for name, tree in trees.items()}
            row = "  ".join(f"{name} {count / 1e3:10.1f}" for name, count in counts.items())
            print(f"  {stage:10s} {row}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--block", type=int, default=64 * 1024)
    parser.add_argument("--baseline", help="a source tree measured alternately in a child process")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--instr", action="store_true", help="count instructions with callgrind instead")
    parser.add_argument("--stages", default="stripper,vouched,chain", help="with --instr: the stages counted")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--count", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(repr(run_here(args.block)))
        return
    if args.count:
        count_here(args.block, args.count[0], args.count[1], int(args.count[2]))
        return
    trees = {"this": str(Path.cwd())} | ({"base": args.baseline} if args.baseline else {})
    if args.instr:
        count_all(trees, args.block, args.stages.split(","))
        return
    results: dict[str, list[dict[str, dict[str, float]]]] = {name: [] for name in trees}
    script = Path(__file__).resolve()
    for _ in range(args.rounds):
        for name, tree in trees.items():
            env = {**os.environ, "PYTHONPATH": tree, "PYTHONHASHSEED": "0"}
            out = subprocess.run([sys.executable, str(script), "--child", "--block", str(args.block)],
                                 cwd=tree, env=env, check=True, capture_output=True, text=True).stdout
            results[name].append(eval(out))  # noqa: S307  our own child's repr of floats
    for case in results["this"][0]:
        print(case)
        for stage in results["this"][0][case]:
            row = "  ".join(f"{name} {min(r[case][stage] for r in runs):8.2f}"
                            for name, runs in results.items())
            print(f"  {stage:10s} {row}")


if __name__ == "__main__":
    main()
