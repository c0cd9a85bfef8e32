"""Settling batches on the lane: replies to callers and hooks, failures counted, lost scripts re-sent."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from functools import partial

import pytest
from redis.exceptions import NoScriptError, ResponseError

from gateway.state.errors import RedisUnavailable
from gateway.state.pipelining import Call
from gateway.state.settling import SentCalls, SentWrites
from gateway.state.write_behind import Write


@dataclass
class FakeGuard:
    failures: list[BaseException] = field(default_factory=list)
    answers: int = 0
    calls_again: list[Call] = field(default_factory=list)
    writes_again: list[Write] = field(default_factory=list)
    done: int = 0

    def failed(self, exc: BaseException) -> None:
        self.failures.append(exc)

    def answered(self) -> None:
        self.answers += 1

    def resend_calls(self, calls: list[Call]) -> None:
        self.calls_again.extend(calls)

    def resend_writes(self, writes: list[Write]) -> None:
        self.writes_again.extend(writes)

    def batch_done(self) -> None:
        self.done += 1

    def batch_answered(self) -> None:
        self.answered()
        self.batch_done()


def _calls(n: int, script: object = None) -> list[Call]:
    loop = asyncio.get_running_loop()
    return [Call(("GET", f"k{i}"), loop.create_future(), script) for i in range(n)]


async def test_replies_go_to_their_callers() -> None:
    guard, calls = FakeGuard(), _calls(2)
    SentCalls(guard, calls).done([b"a", ResponseError("WRONGTYPE")])
    assert calls[0].future.result() == b"a"
    with pytest.raises(RedisUnavailable):  # a refused command fails its caller only
        calls[1].future.result()
    assert guard.answers == 1 and guard.done == 1
    assert [type(f) for f in guard.failures] == [ResponseError]


async def test_a_lost_connection_fails_every_caller_and_counts_each_command() -> None:
    guard, calls = FakeGuard(), _calls(3)
    SentCalls(guard, calls).done(ConnectionError("lost"))
    assert all(isinstance(c.future.exception(), RedisUnavailable) for c in calls)
    assert len(guard.failures) == 3 and guard.answers == 0 and guard.done == 1


async def test_a_lost_script_goes_back_to_the_task_path_unsettled() -> None:
    guard = FakeGuard()
    scripted, plain = _calls(1, script=object()), _calls(1)
    SentCalls(guard, scripted + plain).done([NoScriptError("NOSCRIPT"), b"ok"])
    assert guard.calls_again == scripted and not scripted[0].future.done()
    assert plain[0].future.result() == b"ok"  # control: the other command settled


async def test_a_cancelled_caller_is_skipped() -> None:
    guard, calls = FakeGuard(), _calls(2)
    calls[0].future.cancel()
    SentCalls(guard, calls).done([b"late", b"b"])
    assert calls[0].future.cancelled() and calls[1].future.result() == b"b"


async def test_a_lone_command_settles_as_in_a_batch() -> None:
    """The usual pass, one command: its reply, the guard told of one answered batch; refused, lost with the
    connection or its script lost, as in a batch of several (control: the same outcomes as above)."""
    guard, calls = FakeGuard(), _calls(1)
    SentCalls(guard, calls).done([b"a"])
    assert calls[0].future.result() == b"a" and (guard.answers, guard.done, guard.failures) == (1, 1, [])
    guard, calls = FakeGuard(), _calls(1)
    SentCalls(guard, calls).done([ResponseError("WRONGTYPE")])
    assert isinstance(calls[0].future.exception(), RedisUnavailable) and len(guard.failures) == 1
    guard, calls = FakeGuard(), _calls(1)
    SentCalls(guard, calls).done(ConnectionError("lost"))
    assert isinstance(calls[0].future.exception(), RedisUnavailable) and (guard.answers, guard.done) == (0, 1)
    guard, scripted = FakeGuard(), _calls(1, script=object())
    SentCalls(guard, scripted).done([NoScriptError("NOSCRIPT")])
    assert guard.calls_again == scripted and not scripted[0].future.done()


def _writes(log: list[str], n: int, script: object = None) -> list[Write]:
    return [Write(("SET", f"k{i}", "v"), script, on_failure=partial(log.append, f"failed {i}"),
                  on_done=partial(log.append, f"done {i}")) for i in range(n)]


def test_writes_run_their_done_hooks_on_success() -> None:
    guard, log = FakeGuard(), list[str]()
    SentWrites(guard, _writes(log, 2)).done([b"OK", b"OK"])
    assert log == ["done 0", "done 1"] and guard.answers == 1 and not guard.failures and guard.done == 1


def test_a_lone_write_settles_as_in_a_batch() -> None:
    """The usual deferred batch, one write (the entry's ``SET``): its done hook, one answered batch; refused,
    its failure hook first, as in a batch of several."""
    guard, log = FakeGuard(), list[str]()
    SentWrites(guard, _writes(log, 1)).done([b"OK"])
    assert log == ["done 0"] and (guard.answers, guard.done, guard.failures) == (1, 1, [])
    guard, log = FakeGuard(), list[str]()
    SentWrites(guard, _writes(log, 1)).done([ResponseError("OOM")])
    assert log == ["failed 0", "done 0"] and guard.answers == 0 and len(guard.failures) == 1


def test_a_failed_batch_runs_every_failure_hook_then_the_done_hooks() -> None:
    guard, log = FakeGuard(), list[str]()
    SentWrites(guard, _writes(log, 2)).done(ConnectionError("lost"))
    assert log == ["failed 0", "failed 1", "done 0", "done 1"] and len(guard.failures) == 1
    guard, log = FakeGuard(), list[str]()
    SentWrites(guard, _writes(log, 2)).done([b"OK", ResponseError("OOM")])  # Redis refused one: batch failed
    assert log == ["failed 0", "failed 1", "done 0", "done 1"] and guard.answers == 0


def test_writes_whose_script_was_lost_are_sent_again_and_keep_their_hooks_for_then() -> None:
    guard, log = FakeGuard(), list[str]()
    lost, plain = _writes(log, 1, script=object()), _writes(log, 1)
    SentWrites(guard, lost + plain).done([NoScriptError("NOSCRIPT"), b"OK"])
    assert guard.writes_again == lost and log == ["done 0"]  # the re-sent write's hooks run when it is sent


def test_the_guard_hears_of_the_batch_even_when_a_hook_raises() -> None:
    guard = FakeGuard()

    def boom() -> None:
        raise RuntimeError("hook")

    with pytest.raises(RuntimeError):
        SentWrites(guard, [Write(("SET", "k", "v"), on_done=boom)]).done([b"OK"])
    assert guard.done == 1
