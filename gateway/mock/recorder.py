"""Recording of every attempt that reaches the mock upstream.

Resilience tests assert on what the *gateway* did (how many retries, which
headers it forwarded, whether it cancelled a stream), and the only reliable
witness for that is the upstream itself.  Attempts are recorded before any fault
is applied, so a retried 503 shows up as several attempts.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

MAX_BODY_IN_JSON = 64 * 1024

# Outcomes (besides `fault:<name>`), documented here so tests can rely on them.
COMPLETED = "completed"
CLIENT_DISCONNECTED = "client_disconnected"
QUOTA_429 = "quota_429"
BAD_REQUEST = "bad_request"
NOT_FOUND = "not_found"
ERROR = "error"


@dataclass(slots=True, kw_only=True)
class Attempt:
    """One request as the mock saw it; `outcome` is None while it is still in flight."""

    index: int
    time: float
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    json: Any
    fault: str | None = None
    outcome: str | None = None
    status: int | None = None
    events_sent: int = 0

    @property
    def model(self) -> str | None:
        return self.json.get("model") if isinstance(self.json, dict) else None

    def to_json(self) -> dict[str, Any]:
        """JSON view for `/_mock/requests`; huge bodies are left out to keep it cheap."""
        small = len(self.body) <= MAX_BODY_IN_JSON
        out: dict[str, Any] = {
            "index": self.index,
            "time": self.time,
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "headers": self.headers,
            "body_size": len(self.body),
            "fault": self.fault,
            "outcome": self.outcome,
            "status": self.status,
            "events_sent": self.events_sent,
        }
        if small:
            out["body"] = self.body.decode("utf-8", "replace")
            if self.json is not None:
                out["json"] = self.json
        return out


class Recorder:
    """In-process access to recorded attempts, plus a way to await outcomes without sleeping.

    `max_attempts` bounds memory for long benchmark runs (oldest attempts are
    dropped); counts and stats stay exact because they are kept as counters.
    """

    def __init__(self, max_attempts: int | None = None) -> None:
        self._attempts: deque[Attempt] = deque(maxlen=max_attempts)
        self._next_index = 0
        self._first_live_index = 0  # attempts below this index were cleared
        self._by_path: Counter[str] = Counter()
        self._by_outcome: Counter[str] = Counter()
        self._waiters: list[asyncio.Future[None]] = []

    @property
    def attempts(self) -> list[Attempt]:
        return list(self._attempts)

    def record(
        self,
        *,
        method: str,
        path: str,
        query: dict[str, str],
        headers: dict[str, str],
        body: bytes,
        json: Any,
    ) -> Attempt:
        attempt = Attempt(
            index=self._next_index,
            time=time.time(),
            method=method,
            path=path,
            query=query,
            headers=headers,
            body=body,
            json=json,
        )
        self._next_index += 1
        self._attempts.append(attempt)
        self._by_path[path] += 1
        self._notify()
        return attempt

    def finish(self, attempt: Attempt, outcome: str, status: int | None = None) -> None:
        """Set the outcome once (the first, most specific cause wins) and wake waiters."""
        if attempt.outcome is None:
            attempt.outcome = outcome
            if attempt.index >= self._first_live_index:
                self._by_outcome[outcome] += 1
        if status is not None and attempt.status is None:
            attempt.status = status
        self._notify()

    def clear(self) -> None:
        self._attempts.clear()
        self._by_path.clear()
        self._by_outcome.clear()
        self._first_live_index = self._next_index
        self._notify()

    def count(self, path: str | None = None) -> int:
        """Attempts recorded since the last clear (optionally for one path)."""
        return self._by_path.total() if path is None else self._by_path[path]

    def last(self, path: str | None = None) -> Attempt | None:
        for attempt in reversed(self._attempts):
            if path is None or attempt.path == path:
                return attempt
        return None

    def stats(self) -> dict[str, Any]:
        total = self._by_path.total()
        by_outcome = dict(self._by_outcome)
        in_flight = total - self._by_outcome.total()
        if in_flight:
            by_outcome["in_flight"] = in_flight
        return {"total": total, "by_path": dict(self._by_path), "by_outcome": by_outcome}

    async def wait_for(self, predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
        """Wait until `predicate()` holds, re-checking after every recorder change.

        Lets tests wait for e.g. `client_disconnected` without polling sleeps.
        Raises TimeoutError when it does not happen in time.
        """
        async with asyncio.timeout(timeout_s):
            while not predicate():
                fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                self._waiters.append(fut)
                await fut

    def _notify(self) -> None:
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)
