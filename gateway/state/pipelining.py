"""Awaited Redis commands of one event-loop pass share one round trip (auto-pipelining).

A request waits on Redis for its admissions (a rate-limit script each) and its
exact-cache lookup-and-claim. Sent one by one, each command checks a
connection out of the pool, writes, reads and checks it back in: ~40-55 µs of
client CPU per command here, and a burst of N concurrent requests opens N
connections (a cold replica's first burst then waits on N handshakes). Queued
instead and sent at the end of the loop pass as one batch, the commands of
concurrent requests share a connection, a write and a read: ~8-12 µs per command
at 16-64 commands a pass, and 45 µs at one, as redis-py pipelines (``redis-py`` 8,
measured by the note's microbenchmark). On the lane, ``execute`` measured whole: ~37 µs per pass of
one command and ~13 µs per command at four, against 61-73 µs and ~25 µs through redis-py pipelines
(``bench/results/2026-12-06-shared-state-cost.md``).

Each command stays one atomic command (a Lua script is one); only the round
trip is shared, so no caller sees another's effects differently than it would
have one command earlier or later. Every caller gets its own reply; a command
Redis refuses (``WRONGTYPE``...) fails only its caller. A script Redis has
lost (restart, ``SCRIPT FLUSH``) is loaded and its commands sent again once. The round trip goes over
the ``Lane`` (``gateway.state.lane``: one connection, hiredis packing and parsing, no redis-py pipeline
object per pass).
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway.state.errors import RedisUnavailable

if TYPE_CHECKING:
    from gateway.state.lane import Lane


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs ~1.4 µs more (one per command)
class Call:
    """One awaited command: its arguments, the script an ``EVALSHA`` runs, and where its reply goes (not
    changed once made)."""

    args: tuple[Any, ...]
    future: asyncio.Future[Any]
    script: Any = None  # the registered script (redis-py ``AsyncScript``) of an EVALSHA


Refused = Callable[[BaseException], None]  # told of each command Redis refused (the guard counts a failure)


async def send_calls(lane: Lane, calls: Sequence[Call], refused: Refused, reload: bool = False) -> None:
    """Send ``calls`` in one round trip and hand each its reply (or its own error); ``reload``: their
    scripts first (Redis answered ``NOSCRIPT`` to them already)."""
    pending = [c for c in calls if not c.future.done()]  # a caller cancelled before we left needs nothing
    if reload:
        await lane.load_scripts(c.script for c in pending)
    for attempt in range(2):
        if not pending:
            return
        missing = settle_calls(pending, await lane.run([c.args for c in pending]), refused, attempt == 0)
        await lane.load_scripts(c.script for c in missing)
        pending = missing


def settle_calls(calls: Sequence[Call], replies: list[Any], refused: Refused,
                 retry: bool = True) -> list[Call]:
    """Hand each call its reply; a command Redis refused fails only its caller (``RedisUnavailable``: it falls
    back), the connection and the other commands are fine. Returns the calls whose script Redis lost
    (``NOSCRIPT``), unsettled when ``retry`` (their script is loaded and they are sent again)."""
    missing: list[Call] = []
    for c, reply in zip(calls, replies, strict=True):
        if c.future.done():
            continue  # its caller was cancelled meanwhile
        if not isinstance(reply, Exception):  # the lane's replies: raw values, or a redis-py error each
            c.future.set_result(reply)
        elif retry and c.script is not None and _lost_script(reply):
            missing.append(c)
        else:
            refused(reply)
            c.future.set_exception(RedisUnavailable(type(reply).__name__))
    return missing


def _lost_script(reply: Exception) -> bool:
    from redis.exceptions import NoScriptError  # noqa: PLC0415 - redis-py only once Redis is used

    return isinstance(reply, NoScriptError)


def evalsha_args(script: Any, keys: Sequence[Any], args: Sequence[Any]) -> tuple[Any, ...]:
    """The arguments of one ``EVALSHA`` of a registered script."""
    return ("EVALSHA", script.sha, len(keys), *keys, *args)
