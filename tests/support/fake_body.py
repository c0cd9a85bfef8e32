"""A response body stand-in: an async iterable of byte chunks with ``aclose()``.

It records whether it was closed (and how often), how many chunks were taken, and
can be told to raise after ``fail_after`` chunks, so tests can check that whoever
consumes a body closes it on every path (end, error, cancellation).
"""
from __future__ import annotations

from collections.abc import AsyncIterator, Iterable


class BodyFailed(ConnectionError):
    """The default error a ``FakeBody`` raises after ``fail_after`` chunks."""


class FakeBody:
    def __init__(self, chunks: Iterable[bytes] = (), *, fail_after: int | None = None,
                 error: BaseException | None = None) -> None:
        self.chunks = list(chunks)
        self.fail_after = fail_after
        self.error = error
        self.sent = 0  # chunks handed out
        self.close_calls = 0

    @property
    def closed(self) -> bool:
        return self.close_calls > 0

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            if self.fail_after is not None and self.sent >= self.fail_after:
                break
            if self.closed:
                return
            self.sent += 1
            yield chunk
        if self.fail_after is not None and self.sent >= self.fail_after:
            raise (
                self.error if self.error is not None else BodyFailed(f"body failed after {self.sent} chunks")
            )

    async def aclose(self) -> None:
        self.close_calls += 1

    async def read(self) -> bytes:
        """All chunks joined (raising like iteration does)."""
        return b"".join([chunk async for chunk in self])
