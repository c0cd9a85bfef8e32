"""The waiting room in front of one upstream: a bounded FIFO with three priorities.

When an upstream's bucket is short, a request waits here instead of being sent
to collect a 429. Only the head of the queue asks the buckets; everyone else
waits for their turn, so a large request is not starved by small ones slipping
past it, and N waiters do not poll the backend N times. The head sleeps for
the wait the bucket predicted (a refill), or until a local release pokes it,
or for ``poll_s`` when the wait is unknown (a concurrency slot held by another
replica). Nobody waits past its own give-up time (``max_queue_wait_s``, never
beyond the request's deadline); a head whose predicted wait is already beyond
it gives up at once, so a paused upstream answers 429 fast instead of late.

Times here are the event loop's (real seconds); waits are converted by the
buckets. The queue never raises anything but ``Rejected`` and cancellation.
"""
from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from policies.ratelimit.model import NEVER, Verdict

PRIORITY_RANK = {"high": 0, "normal": 1, "low": 2}
Attempt = Callable[[], Awaitable[Verdict]]


class Rejected(Exception):
    """The request cannot be admitted in time; ``reason``: queue_full | too_large | wait_too_long |
    timeout."""

    def __init__(self, reason: str, verdict: Verdict | None, waited_s: float) -> None:
        super().__init__(reason)
        self.reason = reason
        self.verdict = verdict
        self.waited_s = waited_s

    @property
    def retry_after_s(self) -> float:
        wait = self.verdict.wait_s if self.verdict is not None else 0.0
        return wait if wait > 0 else 1.0


@dataclass(frozen=True, slots=True)
class Admission:
    verdict: Verdict
    waited_s: float = 0.0
    blocked: str = ""  # the limit that made it wait ("" when admitted at once)


@dataclass(slots=True)
class _Waiter:
    rank: int
    seq: int
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    gone: bool = False

    def __lt__(self, other: _Waiter) -> bool:
        return (self.rank, self.seq) < (other.rank, other.seq)


class AdmissionQueue:
    def __init__(self, max_queue: int, time: Callable[[], float],
                 on_depth: Callable[[int], None] | None = None,
                 poll_s: float = 0.05, max_sleep_s: float = 1.0) -> None:
        self.max_queue = max_queue
        self.time = time
        self.on_depth = on_depth
        self.poll_s = poll_s
        self.max_sleep_s = max_sleep_s  # re-ask at least this often: other replicas refund too
        self.depth = 0
        self.last_blocked = ""  # what the head was last refused for: why newcomers queue behind it
        self._heap: list[_Waiter] = []
        self._seq = itertools.count()

    async def admit(self, attempt: Attempt, give_up_at: float, rank: int = 1) -> Admission:
        """Admitted (``Admission``) or ``Rejected``; ``attempt`` asks the buckets once."""
        start = self.time()
        verdict: Verdict | None = None
        if self.depth == 0:
            verdict = await attempt()
            if verdict.ok:
                return Admission(verdict)
            self.last_blocked = verdict.failed
            self._check(verdict, start, give_up_at, start)
        if self.depth >= self.max_queue:
            raise Rejected("queue_full", verdict, 0.0)
        waiter = _Waiter(rank, next(self._seq))
        heapq.heappush(self._heap, waiter)
        self._depth(+1)
        try:
            return await self._wait(waiter, attempt, verdict, start, give_up_at)
        finally:
            waiter.gone = True
            self._depth(-1)
            self.poke()

    async def _wait(self, waiter: _Waiter, attempt: Attempt, verdict: Verdict | None, start: float,
                    give_up_at: float) -> Admission:
        blocked = verdict.failed if verdict is not None else self.last_blocked
        last = verdict
        while True:
            delay = NEVER
            if self._head() is waiter:
                if verdict is None:
                    waiter.wake.clear()  # a poke during the attempt must not be lost
                    verdict = last = await attempt()
                    if verdict.ok:
                        return Admission(verdict, self.time() - start, blocked or verdict.failed)
                    blocked = blocked or verdict.failed
                    self.last_blocked = verdict.failed
                    self._check(verdict, self.time(), give_up_at, start)
                delay = min(verdict.wait_s if verdict.wait_s > 0 else self.poll_s, self.max_sleep_s)
            verdict = None
            left = give_up_at - self.time()
            if left <= 0:
                raise Rejected("timeout", last, self.time() - start)
            try:
                async with asyncio.timeout(min(delay, left)):
                    await waiter.wake.wait()
            except TimeoutError:
                pass
            waiter.wake.clear()

    def _check(self, verdict: Verdict, now: float, give_up_at: float, start: float) -> None:
        if verdict.wait_s == NEVER:
            raise Rejected("too_large", verdict, now - start)
        if verdict.wait_s > 0 and now + verdict.wait_s > give_up_at:
            raise Rejected("wait_too_long", verdict, now - start)

    def _head(self) -> _Waiter | None:
        heap = self._heap
        while heap and heap[0].gone:
            heapq.heappop(heap)
        return heap[0] if heap else None

    def poke(self) -> None:
        """Capacity came back here (a local release): let the head try now."""
        head = self._head()
        if head is not None:
            head.wake.set()

    def _depth(self, delta: int) -> None:
        self.depth += delta
        if self.on_depth is not None:
            self.on_depth(self.depth)
