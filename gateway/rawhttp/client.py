"""One request on the pool: the stale keep-alive retry and the response handle.

A pooled connection the upstream closed while it idled fails before any answer byte (EOF or RST on
our write); the upstream never processed that request, so it goes once more on a fresh connection.
Nothing else is retried here: a fresh connection's failure, or any failure after an answer byte, is the
caller's (and the retry policy's) business.
"""
from __future__ import annotations

from aiohttp.streams import StreamReader
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.rawhttp.connection import RawConnection
from gateway.rawhttp.pool import RawPool

_NO_HEADERS: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())  # empty, read-only: one for all


class RawResponse:
    """Status, headers and the body's ``StreamReader``; ``release`` (read to the end) or ``close``."""

    __slots__ = ("_conn", "_done", "_pool", "_should_close", "content", "headers", "status")

    def __init__(self, pool: RawPool, conn: RawConnection) -> None:
        message, payload = conn.message, conn.payload
        assert message is not None and payload is not None
        conn.message = None  # the parsed head (raw header lines, multidict) is this handle's from now on
        self.status: int = message.code
        self.headers: CIMultiDictProxy[str] = message.headers
        self.content: StreamReader = payload
        self._should_close: bool = message.should_close
        self._pool, self._conn, self._done = pool, conn, False

    def forget_headers(self) -> None:
        """The caller copied what it forwards: the parsed head goes, a long body keeps only its reader."""
        self.headers = _NO_HEADERS

    def release(self) -> None:
        """Back to the pool when the body was read to its end cleanly and nobody asked to close."""
        if self._done:
            return
        self._done = True
        content = self.content
        reusable = not self._should_close and content.is_eof() and content.exception() is None
        self._pool.release(self._conn, reusable)

    def close(self) -> None:
        """Closes the connection (a half-read answer never goes back); a no-op after ``release``."""
        if self._done:
            return
        self._done = True
        self._pool.release(self._conn, False)


async def fetch(
    pool: RawPool, data: bytes, body: bytes | None, head_only: bool, connect_s: float
) -> RawResponse:
    """Send ``data`` (the head, and the body when small) and a large ``body``; wait for the answer's head."""
    for stale_retry in (False, True):
        conn = await pool.acquire(connect_s, fresh=stale_retry)
        try:
            await conn.start(data, body, head_only)
        except ConnectionError:
            pool.release(conn, False)
            if conn.reused and not conn.received and not stale_retry:
                continue  # a stale keep-alive connection: the request never reached a live peer
            raise
        except BaseException:
            pool.release(conn, False)
            raise
        return RawResponse(pool, conn)
    raise AssertionError("unreachable")
