"""The event loop's latency beside a thread running Python code, per GIL switch interval (issue 15).

One thread assembles a 15,000-token streamed answer again and again (the exact cache's fill of a 2 MB
stream: Python code that keeps the GIL until another thread has waited the switch interval for it);
the event loop meanwhile does small ping-pongs over a socket pair, each a few system calls (the GIL is
given up on each). Prints the ping-pong's p50 / p99 / max for each interval, and once with no thread.

Run: ``python -m bench.gil_switch [--seconds 3] [--intervals 0.005,0.001,0.0005]``.
"""
from __future__ import annotations

import argparse
import asyncio
import socket
import sys
import threading
import time

import orjson

from policies.cache.canonical import answer_from_sse


def long_stream(tokens: int = 15_000) -> bytes:
    head = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o"}
    events = [{**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}]
    events += [{**head, "choices": [{"index": 0, "delta": {"content": f" word{i}"}, "finish_reason": None}]}
               for i in range(tokens)]
    events.append({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    return b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events) + b"data: [DONE]\n\n"


def busy(stop: threading.Event, data: bytes) -> None:
    while not stop.is_set():
        answer_from_sse("chat", data)


async def ping_pongs(seconds: float) -> list[float]:
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)

    async def echo() -> None:
        while data := await loop.sock_recv(b, 64):
            await loop.sock_sendall(b, data)

    echoing = asyncio.ensure_future(echo())
    latencies: list[float] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        started = time.perf_counter()
        await loop.sock_sendall(a, b"x")
        await loop.sock_recv(a, 64)
        latencies.append(time.perf_counter() - started)
        await asyncio.sleep(0.002)
    echoing.cancel()
    a.close()
    b.close()
    return sorted(latencies)


def measure(interval: float | None, seconds: float, data: bytes) -> str:
    previous = sys.getswitchinterval()
    sys.setswitchinterval(interval or previous)
    stop = threading.Event()
    thread = threading.Thread(target=busy, args=(stop, data)) if interval is not None else None
    if thread is not None:
        thread.start()
    try:
        lat = asyncio.run(ping_pongs(seconds))
    finally:
        stop.set()
        if thread is not None:
            thread.join()
        sys.setswitchinterval(previous)
    label = f"switch {interval * 1000:.2f} ms, busy thread" if interval is not None else "no busy thread"
    return (f"{label:32} n={len(lat):5} p50 {lat[len(lat) // 2] * 1e3:6.2f}  "
            f"p99 {lat[int(len(lat) * 0.99)] * 1e3:6.2f}  max {lat[-1] * 1e3:6.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--intervals", default="0.005,0.001,0.0005")
    args = parser.parse_args()
    data = long_stream()
    print(measure(None, args.seconds, data))
    for interval in (float(x) for x in args.intervals.split(",")):
        print(measure(interval, args.seconds, data))


if __name__ == "__main__":
    main()
