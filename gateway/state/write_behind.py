"""Fire-and-forget Redis writes that share round trips.

Several features write to Redis after an answer has ended and wait for no
result: rate-limit settlements and quota lessons, the exact cache's fill, the
release of a coalescing claim. Each used to cost a round trip of its own (a
syscall on both sides and a pass through the client). ``GuardedRedis.defer``
queues a ``Write``; the writes queued within ``defer_s`` (1 ms: a request's
quota lesson at its headers and its settlements at its end, and those of its
neighbours under load) go out together in one batch on the lane (``gateway.state.lane``), in
the order they were queued, or sooner: a loop pass whose awaited commands leave first takes the
waiting writes along, ahead of its commands, in the same write (``GuardedRedis._send_pass``).
A write may make its arguments only then (``build``),
so it can gather everything deferred to it until its round trip leaves.
Each write stays one atomic command (a Lua script is one); only the round
trip is shared. A script Redis has lost (restart, ``SCRIPT FLUSH``) is loaded
and its writes sent again. When the round trip fails, every write's
``on_failure`` runs (a settlement is kept for replay; a cache fill counts a
Redis error); ``on_done`` runs after the round trip either way.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.state.lane import Lane

MAX_BATCH = 256  # writes per round trip


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs ~1.4 µs more (one per write)
class Write:
    """One Redis command sent without waiting for its answer (not changed once made)."""

    args: tuple[Any, ...]
    script: Any = None  # the registered script (redis-py ``AsyncScript``) an EVALSHA runs
    on_failure: Callable[[], None] | None = None
    on_done: Callable[[], None] | None = None
    # Makes ``args`` when the round trip is built (same answer if asked again): a write that gathers the
    # updates deferred until then into one command (``policies.ratelimit.redis_buckets``).
    build: Callable[[], tuple[Any, ...]] | None = None


def evalsha(script: Any, keys: Sequence[str], args: Sequence[Any], **hooks: Any) -> Write:
    """A write that runs ``script`` (loaded again if Redis lost it)."""
    return Write(("EVALSHA", script.sha, len(keys), *keys, *args), script, **hooks)


async def send(lane: Lane, writes: Sequence[Write], reload: bool = False) -> None:
    """Run ``writes`` in one round trip; scripts Redis lost are loaded and their writes re-sent once.
    ``reload``: their scripts first (Redis answered ``NOSCRIPT`` to them already)."""
    from redis.exceptions import NoScriptError  # noqa: PLC0415 - redis-py only once Redis is used

    pending = list(writes)
    if reload:
        await lane.load_scripts(w.script for w in pending)
    for attempt in range(2):
        error, missing = outcome(pending, await lane.run(commands(pending)))
        if error is not None:
            raise error
        if not missing:
            return
        if attempt:
            raise NoScriptError("a script did not load")
        await lane.load_scripts(w.script for w in missing)
        pending = missing


def commands(writes: Sequence[Write]) -> list[tuple[Any, ...]]:
    """Each write's command (made now for the writes that ``build`` theirs)."""
    if len(writes) == 1:  # the usual batch at low load (the entry's ``SET``): no comprehension
        w = writes[0]
        return [w.args if w.build is None else w.build()]
    return [w.args if w.build is None else w.build() for w in writes]


def outcome(writes: Sequence[Write], results: list[Any]) -> tuple[Exception | None, list[Write]]:
    """A round trip's verdict: the first error Redis answered (the batch failed), and the writes whose
    script Redis lost (to send again once it is loaded)."""
    missing: list[Write] = []
    for w, r in zip(writes, results, strict=True):
        if isinstance(r, Exception):
            from redis.exceptions import NoScriptError  # noqa: PLC0415 - redis-py only once Redis is used

            if not isinstance(r, NoScriptError):
                return r, []
            missing.append(w)
    return None, missing
