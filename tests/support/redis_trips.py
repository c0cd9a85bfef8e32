"""Count a ``GuardedRedis``'s round trips: the commands of each batch it sends on its lane, by name."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gateway.state.redis_client import GuardedRedis


def round_trips(g: GuardedRedis) -> list[list[str]]:
    """From now on, each batch ``g`` sends on its lane (``run`` or ``submit``: one round trip) appends the
    list of its commands' names (a script loaded again after ``NOSCRIPT`` is not counted)."""
    trips: list[list[str]] = []
    lane = g.lane
    assert lane is not None
    real = lane.run

    async def run(commands: Sequence[Sequence[Any]]) -> list[Any]:
        trips.append([str(c[0]) for c in commands])
        return await real(commands)

    def submit(commands: Sequence[Sequence[Any]], batch: Any, deadline: float, write: bool = False) -> bool:
        queued = real_submit(commands, batch, deadline, write)
        if queued:  # False: not connected, nothing sent (the task path's ``run`` sends it)
            trips.append([str(c[0]) for c in commands])
        return queued

    real_submit = lane.submit
    lane.run = run  # type: ignore[method-assign]
    lane.submit = submit  # type: ignore[method-assign]
    return trips
