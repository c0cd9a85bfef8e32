"""Micro-batching of concurrent single-input embedding requests.

Requests with the same batch key (tenant namespace, upstream, model, every
parameter but the input) that arrive within ``batch_window_ms`` of the first
are merged into one upstream call of up to ``max_batch`` inputs; the answer is
split back by index and each caller gets its own vector and its share of the
tokens. The call runs in its own task with the first request's exchange (its
auth and deadline; the namespace in the key guarantees they are all the same
caller), so a caller that leaves does not cancel the others' batch. A failed
call gives every caller the same error (the provider's status and body, or the
exception).
"""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Mapping
from dataclasses import dataclass, field

from gateway.exchange import Exchange, UpstreamResponse
from policies.cache.embeddings import Input

Call = Callable[[Exchange], Awaitable[UpstreamResponse]]
# The answer's bytes and the batch's inputs -> each input's vector and token share (None: unusable answer);
# the embeddings layer parses a large answer in the work pool.
ShareOut = Callable[[bytes, list[Input]], Awaitable[tuple[list[bytes], list[int]] | None]]


@dataclass(frozen=True, slots=True)
class Share:
    vector: bytes  # the provider's JSON for this input's embedding
    tokens: int


@dataclass(frozen=True, slots=True)
class Failed:
    status: int
    headers: Mapping[str, str]
    body: bytes


@dataclass(slots=True)
class _Batch:
    ex: Exchange
    call: Call
    share: ShareOut
    items: list[Input] = field(default_factory=list)
    futures: list[asyncio.Future[Share | Failed]] = field(default_factory=list)
    handle: asyncio.TimerHandle | None = None


class Batcher:
    def __init__(self, on_batch: Callable[[int], None] | None = None) -> None:
        self._open: dict[Hashable, _Batch] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.on_batch = on_batch

    async def submit(self, key: Hashable, ex: Exchange, call: Call, item: Input, window_s: float,
                     max_batch: int, share: ShareOut) -> Share | Failed:
        loop = asyncio.get_running_loop()
        batch = self._open.get(key)
        if batch is None:
            batch = self._open[key] = _Batch(ex, call, share)
            batch.handle = loop.call_later(window_s, self._fire, key, batch)
        future: asyncio.Future[Share | Failed] = loop.create_future()
        batch.items.append(item)
        batch.futures.append(future)
        if len(batch.items) >= max_batch:
            self._fire(key, batch)
        return await future

    def _fire(self, key: Hashable, batch: _Batch) -> None:
        if self._open.get(key) is batch:
            del self._open[key]
        if batch.handle is not None:
            batch.handle.cancel()
            batch.handle = None
        task = asyncio.get_running_loop().create_task(self._run(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: _Batch) -> None:
        ex, n = batch.ex, len(batch.items)
        if n > 1 and ex.body is not None:
            ex.set_body({**ex.body, "input": batch.items})
        if self.on_batch is not None:
            self.on_batch(n)
        try:
            resp = await batch.call(ex)
            data = b"".join([chunk async for chunk in resp.body])
            parsed = await batch.share(data, batch.items) if resp.status == 200 else None
        except BaseException as exc:
            for future in batch.futures:
                if not future.done():
                    future.set_exception(exc)
                    future.exception()  # a caller that left must not make this "never retrieved"
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        if parsed is None:
            outcome: list[Share | Failed] = [Failed(resp.status if resp.status != 200 else 502, resp.headers,
                                                    data)] * n
        else:
            vectors, tokens = parsed
            outcome = [Share(v, t) for v, t in zip(vectors, tokens, strict=True)]
        for future, result in zip(batch.futures, outcome, strict=True):
            if not future.done():
                future.set_result(result)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
