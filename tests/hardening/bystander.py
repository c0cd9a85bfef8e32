"""The bystander tenant of ``test_bounded_work.py``, in its own process.

It keeps ``CHATS`` small chats in flight, one after another each (and probes ``/healthz`` every 50 ms),
until a line arrives on stdin, then prints what it measured as one JSON line: every call's start and
end on the system's monotonic clock, so the test keeps those that overlap its attack. In its own
process, its latencies are the gateway's: an attack run from the same event loop (30 unread streams,
20 MB of uploads) delayed the bystander's own client by up to 60 ms and was counted against the gateway.

``python -m tests.hardening.bystander URL KEY MODEL`` prints ``ready`` once its first chat is answered.
"""
from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import asdict, dataclass, field

import aiohttp
import orjson

CHATS = 2
Span = tuple[float, float]  # (start, end), time.monotonic()


@dataclass
class Watch:
    chats: list[Span] = field(default_factory=list)
    healthz: list[Span] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def during(self, *windows: Span) -> Watch:
        """The calls that overlapped any of ``windows`` (each ``(start, end)``)."""
        return self._kept(windows, overlapping=True)

    def outside(self, *windows: Span) -> Watch:
        """The calls that overlapped none of ``windows``."""
        return self._kept(windows, overlapping=False)

    def _kept(self, windows: tuple[Span, ...], *, overlapping: bool) -> Watch:
        def keep(spans: list[Span]) -> list[Span]:
            return [span for span in spans
                    if any(span[1] >= start and span[0] <= end for start, end in windows) is overlapping]

        return Watch(keep(self.chats), keep(self.healthz), self.failures)

    @property
    def latencies(self) -> list[float]:
        return [end - start for start, end in self.chats]

    @property
    def healthz_max(self) -> float:
        return max((end - start for start, end in self.healthz), default=0.0)


async def watch(url: str, key: str, model: str, stop: asyncio.Event, ready: asyncio.Event) -> Watch:
    """Chats (a real provider round trip: cache bypassed) and health probes until ``stop``."""
    seen = Watch()
    body = orjson.dumps({"model": model, "messages": [{"role": "user", "content": "ping"}]})
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json",
               "x-gateway-cache": "bypass"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        async def chats() -> None:
            while not stop.is_set():
                started = time.monotonic()
                async with session.post(url + "/v1/chat/completions", data=body, headers=headers) as resp:
                    await resp.read()
                    if resp.status != 200:
                        seen.failures.append(f"chat {resp.status}")
                seen.chats.append((started, time.monotonic()))
                ready.set()

        async def health() -> None:
            while not stop.is_set():
                started = time.monotonic()
                async with session.get(url + "/healthz") as resp:
                    await resp.read()
                seen.healthz.append((started, time.monotonic()))
                await asyncio.sleep(0.05)

        await asyncio.gather(*(chats() for _ in range(CHATS)), health())
    return seen


async def main(url: str, key: str, model: str) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    ready = asyncio.Event()
    task = asyncio.ensure_future(watch(url, key, model, stop, ready))
    await asyncio.wait([task, asyncio.ensure_future(ready.wait())], return_when=asyncio.FIRST_COMPLETED)
    print("ready", flush=True)
    await reader.readline()  # a line or EOF: stop
    stop.set()
    print(orjson.dumps(asdict(await task)).decode(), flush=True)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
