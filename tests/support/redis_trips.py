"""Count a ``GuardedRedis``'s round trips: the commands of each pipeline it sends, by name."""
from __future__ import annotations

from gateway.state.redis_client import GuardedRedis


def round_trips(g: GuardedRedis) -> list[list[str]]:
    """From now on, each pipeline ``g`` sends (one round trip) appends the list of its commands' names."""
    trips: list[list[str]] = []
    real = g.client.pipeline

    def pipeline(*args: object, **kwargs: object) -> object:
        pipe = real(*args, **kwargs)  # type: ignore[arg-type]
        names: list[str] = []
        trips.append(names)
        queue = pipe.execute_command

        def execute_command(*command: object, **options: object) -> object:
            names.append(str(command[0]))
            return queue(*command, **options)

        pipe.execute_command = execute_command  # type: ignore[method-assign]
        return pipe

    g.client.pipeline = pipeline  # type: ignore[method-assign]
    return trips
