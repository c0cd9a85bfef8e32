"""A controllable upstream and an exchange for the single-flight tests."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from gateway.errors import UpstreamFailure
from gateway.exchange import Exchange, UpstreamResponse
from tests.support.exchange import build_exchange


def exchange() -> Exchange:
    return build_exchange(request_id="r", method="POST", path="/", operation="chat",
                          headers=None,  # type: ignore[arg-type]
                    raw_body=b"", body={}, received_at=0, deadline=1e9)


class Upstream:
    """A controllable upstream: chunks are released by the test."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.calls = 0
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.fail_at = fail_at
        self.closed = False

    async def __call__(self, ex: Exchange) -> UpstreamResponse:
        self.calls += 1
        return UpstreamResponse(200, {}, self.body())

    async def body(self) -> AsyncIterator[bytes]:
        n = 0
        try:
            while (chunk := await self.queue.get()) is not None:
                if self.fail_at == n:
                    raise UpstreamFailure("reset_mid_stream", "boom", committed=True)
                n += 1
                yield chunk
        finally:
            self.closed = True


async def read_all(resp: UpstreamResponse) -> bytes:
    return b"".join([c async for c in resp.body])
