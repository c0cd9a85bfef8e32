"""CPU of one stream through a single flight nobody shares: this tree's ``singleflight`` vs a baseline's.

In process, no sockets: an upstream body whose every chunk arrives on a later loop turn (a future set by
``call_soon``, as a socket read is), read to its end through ``Flights.lead`` + ``Flight.wait`` exactly as
the coalescing layer does for a request that coalesces nothing (every bench request: each is unique).
``none`` reads the same body without a flight: what the flight itself adds is the difference.

    python -m bench.flight_cost --baseline /tmp/base
"""
from __future__ import annotations

import argparse
import asyncio
import importlib.util
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from gateway.exchange import UpstreamResponse

CHUNK = b'data: {"id":"c","choices":[{"index":0,"delta":{"content":"tok"},"finish_reason":null}]}\n\n'


def load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


async def later() -> None:
    """One loop turn, as a read waits for the socket."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()
    loop.call_soon(fut.set_result, None)
    await fut


class Body:
    def __init__(self, n: int) -> None:
        self.n = n

    def __aiter__(self) -> Body:
        return self

    async def __anext__(self) -> bytes:
        if self.n == 0:
            raise StopAsyncIteration
        self.n -= 1
        await later()
        return CHUNK

    async def aclose(self) -> None:
        self.n = 0


def through(module: ModuleType, chunks: int) -> Callable[[], Awaitable[None]]:
    async def one() -> None:
        async def call(ex: Any) -> UpstreamResponse:
            await later()
            return UpstreamResponse(200, {}, Body(chunks))

        flight = module.Flights().lead("k", None, call)
        resp = await flight.wait(leader=True)
        async for _ in resp.body:
            pass
    return one


def bare(chunks: int) -> Callable[[], Awaitable[None]]:
    async def one() -> None:
        await later()
        async for _ in Body(chunks):
            pass
    return one


async def per_stream(run: Callable[[], Awaitable[None]], n: int) -> float:
    started = time.process_time()
    for _ in range(n):
        await run()
    return (time.process_time() - started) / n * 1e6


Run = Callable[[], Awaitable[None]]


async def measure(runs: dict[str, Run], reps: int, n: int) -> dict[str, list[float]]:
    for run in runs.values():
        await per_stream(run, n // 4)  # warm-up
    out: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(reps):  # alternated, so a change in the machine's load touches every variant alike
        for name, run in runs.items():
            out[name].append(await per_stream(run, n))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", required=True, help="the baseline source tree (a checkout)")
    parser.add_argument("--chunks", type=int, default=20)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--streams", type=int, default=1000)
    args = parser.parse_args()
    here = Path(__file__).resolve().parent.parent
    runs = {
        "this tree": through(load(here / "policies/cache/singleflight.py", "_sf_this"), args.chunks),
        "baseline": through(load(Path(args.baseline) / "policies/cache/singleflight.py", "_sf_base"),
                            args.chunks),
        "none": bare(args.chunks),
    }
    figures = asyncio.run(measure(runs, args.reps, args.streams))
    for name, values in figures.items():
        print(f"{name}: {statistics.median(values):.1f} us CPU per {args.chunks}-chunk stream "
              f"(median of {args.reps}: {', '.join(f'{v:.0f}' for v in values)})")


if __name__ == "__main__":
    main()
