"""Batches submitted to the open lane (``GuardedRedis._submit``), settled from its ``data_received``.

The hot path's awaited commands and deferred writes travel without a task, a coroutine or an
``asyncio.timeout`` per round trip (``bench/results/2026-12-07-host-state-cost.md``: about a third of the
task path's client work): the lane calls the batch's ``Sent.done`` with its replies in order, or with the
failure that lost the connection; the lane's watchdog bounds the wait. What a settled batch
reports goes to its guard through ``Guard``: failures count towards its cooling off, an answer ends it,
commands whose script Redis lost go back to the task path, and ``drain`` learns when the last batch is in.
"""
from __future__ import annotations

import abc
from typing import Any, Protocol

from gateway.state.errors import RedisUnavailable
from gateway.state.lane import Batch
from gateway.state.pipelining import Call, settle_calls
from gateway.state.write_behind import Write, outcome


class Guard(Protocol):
    """What a settled batch tells the guard it was submitted by (``GuardedRedis``)."""

    def failed(self, exc: BaseException) -> None: ...
    def answered(self) -> None: ...
    def resend_calls(self, calls: list[Call]) -> None: ...
    def resend_writes(self, writes: list[Write]) -> None: ...
    def batch_done(self) -> None: ...
    def batch_answered(self) -> None: ...  # ``answered`` then ``batch_done``: the usual batch, one call


class Sent(Batch, abc.ABC):
    """A batch on the lane (bounded by the lane's watchdog; the lane's record of it too), then its settling.
    Each kind sets ``guard`` in its own ``__init__`` (one batch each: no ``super()`` call)."""

    __slots__ = ("guard",)
    guard: Guard

    def done(self, result: list[Any] | BaseException) -> None:
        try:
            self.settle(result)
        finally:
            self.guard.batch_done()

    @abc.abstractmethod
    def settle(self, result: list[Any] | BaseException) -> None:
        """Hand the batch's replies (or its failure) to whoever waits for them."""


class SentCalls(Sent):
    """Awaited commands: each caller gets its reply, or ``RedisUnavailable``."""

    __slots__ = ("calls",)

    def __init__(self, guard: Guard, calls: list[Call]) -> None:
        self.guard = guard
        self.calls = calls

    def done(self, result: list[Any] | BaseException) -> None:
        calls = self.calls
        if len(calls) == 1 and type(result) is list and not isinstance(result[0], Exception):
            future = calls[0].future  # the usual lone lookup, answered: two calls (this and the guard's)
            if not future.done():
                future.set_result(result[0])
            self.guard.batch_answered()
            return
        Sent.done(self, result)

    def settle(self, result: list[Any] | BaseException) -> None:
        guard, calls = self.guard, self.calls
        if isinstance(result, BaseException):  # each command counts as one failure, as sent one by one
            for _ in calls:
                guard.failed(result)
            for c in calls:
                if not c.future.done():
                    c.future.set_exception(RedisUnavailable(type(result).__name__))
            return
        guard.answered()
        missing = settle_calls(calls, result, guard.failed)
        if missing:  # a script Redis lost: the task path loads it and sends them again
            guard.resend_calls(missing)


class SentWrites(Sent):
    """Deferred writes: their hooks (``on_failure`` when the batch failed, then ``on_done``)."""

    __slots__ = ("writes",)

    def __init__(self, guard: Guard, writes: list[Write]) -> None:
        self.guard = guard
        self.writes = writes

    def done(self, result: list[Any] | BaseException) -> None:
        writes = self.writes
        if len(writes) == 1 and type(result) is list and not isinstance(result[0], Exception):
            self.guard.batch_answered()  # the usual lone write (the entry's ``SET``), answered
            on_done = writes[0].on_done
            if on_done is not None:
                on_done()
            return
        Sent.done(self, result)

    def settle(self, result: list[Any] | BaseException) -> None:
        guard, writes = self.guard, self.writes
        error, missing = (result, []) if isinstance(result, BaseException) else outcome(writes, result)
        if error is not None:
            guard.failed(error)
            for w in writes:
                if w.on_failure is not None:
                    w.on_failure()
        else:
            guard.answered()
        if missing:  # a script Redis lost: sent again on the task path, whose hooks then run for them
            guard.resend_writes(missing)
            sent_again = {id(w) for w in missing}
            writes = [w for w in writes if id(w) not in sent_again]
        for w in writes:
            if w.on_done is not None:
                w.on_done()
