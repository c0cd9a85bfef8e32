"""Collect an answer while it streams to the client, and store it only after a clean end.

The body is wrapped by one async generator that yields every chunk unchanged
and keeps a reference to it (no copy, no parsing). Only when the upstream body
ended normally is the answer assembled (``policies.cache.canonical``) and handed
to the registered callbacks (exact cache, semantic cache). A short (up to 8 KiB)
one-choice chat or completions stream in the providers' usual form is not
assembled here: it is handed over as its raw bytes with the finish reason read
from them (``canonical.stream_reasons``), and assembled on its first hit
(``CachedAnswer.ready``; issue 21: the assembly, its dump and the templates were
15-20% of a streamed miss's instructions in the default config). An error raised by
the body, a client disconnect (``aclose``/cancel) or an oversized answer stores
nothing. One collector per exchange: a second cache layer adds its callback to
the first one's collector instead of wrapping the body again.

Nothing here keeps the exchange alive: the collector lives in ``ex.state`` and
callbacks receive the exchange as an argument instead of closing over it, so a
finished request is freed by reference counting alone (a cycle
``ex -> state -> fill -> callback -> ex`` made the cyclic GC walk every
request's objects: 1.3 s of GC pauses per 15k requests).
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from gateway.body import Body, Observed
from gateway.exchange import Exchange, StateKey, UpstreamResponse
from policies.cache.canonical import (
    answer_from_json,
    answer_from_sse,
    complete,
    finish_reasons,
    stream_reasons,
)
from policies.cache.entry import RAW_MAX_BYTES, RAW_OPERATIONS, CachedAnswer

log = logging.getLogger("gateway.cache")
Callback = Callable[[Exchange, CachedAnswer, list[str]], None]
Refused = Callable[[str], None]  # a layer's decision counter: the answer it wanted was not stored, and why
INLINE_FILL_BYTES = 256 * 1024  # larger answers are assembled off the event loop
DEFAULT_FILL_BUDGET = 32 * 1024 * 1024
Assembled = tuple[CachedAnswer, list[str]] | None  # the entry and its finish reasons; None: not complete


@dataclass(slots=True)
class FillBudget:
    """Bytes all answers being collected may hold together (issue 15: 60 unread 2 MB streams held
    every byte already relayed, ~2 MB each). Past it a new chunk makes its answer give up caching."""

    max_bytes: int = DEFAULT_FILL_BUDGET
    used: int = 0
    # Large answers are assembled here, one at a time: parsing a 2 MB answer holds ~20 MB for a moment,
    # so running them all at once (the default executor's 6 threads) multiplied that peak.
    executor: ThreadPoolExecutor | None = None
    # The stores behind are shared (Redis): a large answer is also encoded for Redis (zlib) in the
    # assembler's thread, not by the store's ``set`` on the loop (20-40 ms for 2 MB).
    shared: bool = False

    async def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)
            self.executor = None

    def assembler(self) -> ThreadPoolExecutor:
        if self.executor is None:
            self.executor = ThreadPoolExecutor(1, thread_name_prefix="cache-fill")
        return self.executor


@dataclass(slots=True)
class Fill:
    operation: str
    sse: bool
    limit: int
    callbacks: list[Callback] = field(default_factory=list)
    refusals: list[Refused] = field(default_factory=list)  # each layer's decision counter, when not stored
    chunks: list[bytes] = field(default_factory=list)
    size: int = 0
    overflow: bool = False
    budget: FillBudget | None = None

    def keep(self, chunk: bytes) -> bytes:
        """``add`` as a body filter: the chunk passes unchanged (the body's per-chunk call: one, not two)."""
        if self.overflow:
            return chunk
        budget, n = self.budget, len(chunk)
        if self.size + n > self.limit or (budget is not None and budget.used + n > budget.max_bytes):
            self.overflow = True
            self.release()
            return chunk
        self.size += n
        if budget is not None:
            budget.used += n
        self.chunks.append(chunk)
        return chunk

    def add(self, chunk: bytes) -> None:
        self.keep(chunk)

    def release(self) -> None:
        """Give the collected bytes back to the budget (at the end, however the body ended)."""
        if self.budget is not None and self.chunks:
            self.budget.used -= sum(map(len, self.chunks))
        self.chunks = []

    def complete(self, ex: Exchange) -> None:
        if not self.callbacks:
            return
        if self.overflow:  # over the entry's cap or the fills' budget: given up while it streamed
            _refuse(self.refusals, "not_stored_too_large")
            return
        claim = ex.state.get(CLAIM_KEY)
        if claim is not None and not claim():
            return
        callbacks, self.callbacks = self.callbacks, []
        refusals, self.refusals = self.refusals, []
        chunks = self.chunks
        self.release()
        if self.size <= INLINE_FILL_BYTES:
            data = b"".join(chunks)
            assembled = (self.sse and self._raw(ex, data)) or self._assemble(data)
            if assembled is not None and not self.sse and ex.record.reported_usage is None:
                # the usage of the parse the entry needed anyway: the relay then does not search the bytes
                ex.record.reported_usage = assembled[0].usage
            _store(ex, callbacks, refusals, assembled)
            return
        # A large answer is parsed in a thread (issue 15: seconds of loop time for big answers); the
        # callbacks (index, stores) run back on the loop. Nobody waits for it: the client has its answer.
        executor = self.budget.assembler() if self.budget is not None else None
        encode = self.budget is not None and self.budget.shared
        done = asyncio.get_running_loop().run_in_executor(executor, self._assemble_chunks, chunks, encode)
        done.add_done_callback(lambda fut: _store(ex, callbacks, refusals, _result(fut)))

    def _raw(self, ex: Exchange, data: bytes) -> Assembled:
        """The stream as it came, when its bytes tell its finish reason (None: assemble it now). Only for
        one choice: ``n`` asks for more, whose reasons the bytes cannot pair with their choices."""
        if not self.sse or self.operation not in RAW_OPERATIONS or len(data) > RAW_MAX_BYTES:
            return None
        n = ex.body.get("n") if ex.body is not None else None
        reasons = stream_reasons(data) if n is None or n == 1 else None
        if reasons is None:
            return None
        return CachedAnswer.from_stream(self.operation, data, reasons, time.time()), reasons

    def _assemble_chunks(self, chunks: list[bytes], encode: bool = False) -> Assembled:
        return self._assemble(b"".join(chunks), encode)

    def _assemble(self, data: bytes, encode: bool = False) -> Assembled:
        obj = answer_from_sse(self.operation, data) if self.sse else answer_from_json(self.operation, data)
        if obj is None:
            return None
        created = time.time()
        # a JSON answer is stored as it came: checked and read once, not serialised again (issue 21)
        answer = CachedAnswer.from_obj(self.operation, obj, created) if self.sse else \
            CachedAnswer.from_json(self.operation, data, obj, created)
        if encode:
            answer.encoded = answer.encode()  # taken by the shared store's ``set``
        return answer, finish_reasons(self.operation, obj)


def _result(fut: asyncio.Future[Assembled]) -> Assembled:
    if fut.cancelled() or fut.exception() is not None:
        return None
    return fut.result()


def _store(ex: Exchange, callbacks: list[Callback], refusals: list[Refused], assembled: Assembled) -> None:
    if assembled is None:  # not a complete, clean answer (no [DONE], an error event, a broken chunk)
        _refuse(refusals, "not_stored_incomplete")
        return
    answer, reasons = assembled
    for callback in callbacks:
        try:
            callback(ex, answer, reasons)
        except Exception:
            log.exception("cache fill callback failed")
    answer.encoded = None  # a store that did not take it must not keep it


def _refuse(refusals: list[Refused], decision: str) -> None:
    for refused in refusals:
        refused(decision)


FILL_KEY: StateKey[Fill] = StateKey("cache.fill")  # one collector per exchange, shared by the cache layers
# Set by single flight: only the subscriber whose claim succeeds stores the shared answer.
CLAIM_KEY: StateKey[Callable[[], bool]] = StateKey("cache.fill_claim")


def refusal(ex: Exchange, primary: tuple[str, str], reasons: list[str], truncated_ok: bool) -> str | None:
    """Why a finished answer must not be stored (a ``not_stored_*`` decision), or None to store it.

    Incomplete: a choice without a finishing ``finish_reason`` (``null``, ``"error"``, ``{}``...).
    Fallback: another upstream or model than the key names produced it (``primary``: the target the
    key was taken for); such answers are not stored at all, so the primary's key never holds them.
    """
    if not complete(reasons):
        return "not_stored_incomplete"
    if "length" in reasons and not truncated_ok:
        return "not_stored_truncated"
    if (ex.target.upstream, ex.target.model) != primary:
        return "not_stored_fallback"
    return None


def attach_fill(ex: Exchange, resp: UpstreamResponse, callback: Callback, limit: int,
                budget: FillBudget | None = None, refused: Refused | None = None) -> UpstreamResponse:
    """Arrange for ``callback`` to get the canonical answer if ``resp`` ends cleanly with a 200; else
    ``refused`` hears why it was not stored (too large for the collector, or not a complete answer)."""
    if resp.status != 200:
        return resp
    fill = ex.state.get(FILL_KEY)
    if fill is not None:
        fill.callbacks.append(callback)
        if refused is not None:
            fill.refusals.append(refused)
        return resp
    fill = Fill(operation=ex.request.operation, sse=resp.is_sse, limit=limit, callbacks=[callback],
                refusals=[refused] if refused is not None else [], budget=budget)
    ex.state.set(FILL_KEY, fill)
    return resp.with_body(_observe(fill, ex, resp.body))


def _observe(fill: Fill, ex: Exchange, body: Body) -> Body:
    return Observed(body, on_chunk=fill.keep, on_end=_FillEnd(fill, ex))


class _FillEnd:
    """``on_end`` of a collected body: a normal end completes the fill; however it ends, the bytes go
    back to the budget. Slotted, not a closure (a stream holds it until its end: ~0.1 KB less)."""

    __slots__ = ("ex", "fill")

    def __init__(self, fill: Fill, ex: Exchange) -> None:
        self.fill, self.ex = fill, ex

    def __call__(self, error: BaseException | None) -> None:
        fill = self.fill
        if error is None:  # a normal end of the upstream body only
            fill.complete(self.ex)
        if fill.chunks:  # (``complete`` gave them back already, as a rule)
            fill.release()
