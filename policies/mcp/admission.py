"""A server's admission: its ``rpm`` and ``max_concurrency``, with a FIFO queue instead of refusals.

A call that finds the server full waits in line (at most ``max_queue`` calls, each at most
``max_queue_wait_s`` and never past its own deadline); a full queue or a wait that runs out is
refused (``queue_full``, ``queue_timeout``), which the call answers with its fallback or an error.
``enforce: false`` is the shadow mode: what would have waited is counted ``shadow_<limit>`` and
goes at once. Every decision is counted (``gateway_mcp_admission_total``).
"""
from __future__ import annotations

import asyncio
import contextlib
from collections import deque

from policies.mcp.config import McpRateLimit
from policies.ratelimit.buckets import MemoryBuckets
from policies.ratelimit.model import WINDOW_S, Limit, LimitSet

MAX_RPM_WAIT_S = 60.0


class Refused(Exception):
    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


class Admission:
    def __init__(self, key: str, cfg: McpRateLimit, buckets: MemoryBuckets) -> None:
        self.cfg = cfg
        self.buckets = buckets
        rpm = cfg.rpm
        limits = (Limit("rpm", "bucket", float(rpm), rpm / WINDOW_S),) if rpm else ()
        self.limits = LimitSet("upstream", key, key, limits) if limits else None
        self.inflight = 0
        self._line: deque[object] = deque()
        self._wake = asyncio.Event()

    @property
    def waiting(self) -> int:
        return len(self._line)

    async def enter(self, wait_s: float) -> str:
        """Take a place (waiting up to ``wait_s``); the decision, or ``Refused``."""
        blocked = self._try() if not self._line else ("queue", 0.0)
        if blocked is None:
            return "admitted"
        if not self.cfg.enforce:
            self.inflight += 1
            return f"shadow_{blocked[0]}"
        if len(self._line) >= self.cfg.max_queue or min(wait_s, self.cfg.max_queue_wait_s) <= 0:
            raise Refused("queue_full")
        await self._wait(min(wait_s, self.cfg.max_queue_wait_s))
        return "queued"

    def leave(self) -> None:
        self.inflight -= 1
        self._pulse()

    def _try(self) -> tuple[str, float] | None:
        """None: a place was taken; else (the binding limit, seconds until it may fit; 0: unknown)."""
        limit = self.cfg.max_concurrency
        if limit is not None and self.inflight >= limit:
            return ("concurrency", 0.0)
        if self.limits is not None:
            verdict = self.buckets.acquire_now(self.limits, (1,), "")
            if not verdict.ok:
                return ("rpm", min(verdict.wait_s, MAX_RPM_WAIT_S))
        self.inflight += 1
        return None

    async def _wait(self, limit_s: float) -> None:
        token = object()
        self._line.append(token)
        try:
            async with asyncio.timeout(limit_s):
                while True:
                    retry_in: float | None = None
                    if self._line[0] is token:
                        blocked = self._try()
                        if blocked is None:
                            return
                        retry_in = blocked[1] or None
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), retry_in)
        except TimeoutError as exc:
            raise Refused("queue_timeout") from exc
        finally:
            self._line.remove(token)
            self._pulse()  # the next in line may try now

    def _pulse(self) -> None:
        """Wake every waiter once (each checks whether it is first in line)."""
        self._wake.set()
        self._wake = asyncio.Event()
