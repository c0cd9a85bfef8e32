"""Read a client's request body, once.

The size limit is applied to the decompressed body (gzip bombs stop at the limit, not at memory
exhaustion) and the whole body must arrive within ``server.body_timeout_s``. The body is then parsed
and checked (``gateway/request_json.py``) and its shape validated (``gateway/request_schema.py``), once
(``gateway/decode.py``); everything answers bad input with a ``LocalReply`` in the OpenAI error shape
and the right 4xx.
"""
from __future__ import annotations

import asyncio
from collections import deque
from functools import partial
from typing import TYPE_CHECKING

from aiohttp import web
from aiohttp.http_exceptions import ContentEncodingError
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestPayloadError

from gateway.appstate import APP_STATE
from gateway.decode import DECODE_INLINE_MAX_BYTES
from gateway.errors import LocalReply, bad_request
from gateway.received import ReceiveBudget, Received, prefault
from gateway.small_queue import SmallQueue

if TYPE_CHECKING:
    from gateway.telemetry.metrics import Metrics
    from gateway.tokens.pool import WorkPool

SERVER_DECODED = frozenset({"identity", "gzip", "deflate", "br", "zstd"})


def too_large(limit: int) -> LocalReply:
    return LocalReply(413, f"Request body too large: the limit is {limit} bytes.",
                      type="invalid_request_error", code="request_too_large")


async def read_body(request: web.Request, limit: int, timeout_s: float | None = None, *,
                    work: WorkPool | None = None, tenant: str = "") -> bytes:
    """The request body, decompressed, refused past ``limit`` bytes after decompression.

    aiohttp's parser already inflates gzip/deflate/br/zstd bodies as they stream
    in, so counting what we read here counts decompressed bytes: a gzip bomb is
    stopped at the limit, not after it filled memory. The whole body must arrive
    within ``timeout_s`` (None: ``server.body_timeout_s``): a client that trickles
    its body gets 408 instead of holding a task and a buffer forever.

    With ``work``, a large body's pieces are joined there (fair per ``tenant``, ``kind="join"``), as the
    handler's decode does: a multi-MB join is one C call that keeps the GIL ~3-5 ms. The routes that
    forward bytes unparsed (passthrough, tools, MCP) pass it.
    """
    pieces = await read_pieces(request, limit, timeout_s)
    if work is None or len(pieces) < 2 or sum(map(len, pieces)) < DECODE_INLINE_MAX_BYTES:
        return b"".join(pieces)  # one piece: itself, not a copy
    join = partial(b"".join, pieces)
    return await work.run(tenant, "join", join, join, holds_gil=True)  # busy or over budget: on the loop


async def read_large(request: web.Request, limit: int, work: WorkPool, tenant: str,
                     timeout_s: float | None = None, *, budget: ReceiveBudget | None = None,
                     metrics: Metrics | None = None) -> list[bytes] | Received:
    """A large body for the handler's decode: with a declared length and no content encoding, in a
    ``Received`` buffer whose pages a pool thread touched first (``gateway/received.py``: the pieces kept
    until the body was whole cost the loop ~5,000 page faults per 4 x 5 MB), counted in
    ``gateway_work_total{kind="prefault"}`` (busy: the loop faults the pages as it copies, as before);
    otherwise its received pieces (``read_pieces``). Prefaulted buffers still receiving hold at most
    ``budget`` (the worker's ``ReceiveBudget``; past it: pieces, counted in ``metrics`` as the decision
    ``receive/prefault_over_budget``)."""
    declared = request.content_length
    if declared is None or declared > limit or declared < DECODE_INLINE_MAX_BYTES \
            or request.headers.get("content-encoding", "").strip():
        return await read_pieces(request, limit, timeout_s)
    budget = budget if budget is not None else ReceiveBudget(limit)
    if not budget.take(declared):
        if metrics is not None:
            metrics.decision("receive", "prefault_over_budget")
        return await read_pieces(request, limit, timeout_s)
    try:
        into = Received(declared)
        if not await work.run(tenant, "prefault", partial(prefault, into), _not_prefaulted):
            into = Received(declared)  # the first may still be being zeroed (over budget): never share it
        await read_pieces(request, limit, timeout_s, into=into)
    finally:
        budget.give(declared)
    return into


def _not_prefaulted() -> bool:
    """The pool's fallback for ``prefault`` (busy): the loop's copies fault the pages themselves."""
    return False


async def read_pieces(request: web.Request, limit: int, timeout_s: float | None = None, *,
                      into: Received | None = None) -> list[bytes]:
    """``read_body``'s bytes as they were received, not joined: joining a multi-MB body is ~3-5 ms of
    GIL in one C call (fresh pages), so the handler has it done in the work pool (issue 15). With
    ``into``, each piece is copied there instead of kept (and [] returned)."""
    if request.content.is_eof():  # the whole body is already here (most requests): no timer needed
        return await _read_pieces(request, limit, into)
    if timeout_s is None:
        timeout_s = request.app[APP_STATE].config.server.body_timeout_s
    try:
        async with asyncio.timeout(timeout_s):
            return await _read_pieces(request, limit, into)
    except TimeoutError as exc:
        raise LocalReply(408, f"The request body did not arrive within {timeout_s:g} s.",
                         type="invalid_request_error", code="request_timeout") from exc


def body_if_whole(request: web.Request, limit: int) -> bytes | None:
    """``read_body`` without a coroutine when the whole body is already here (most requests): taken in one
    piece, with the same checks and refusals; None when it is still arriving, or declared large (taken
    with ``read_pieces``, so that no multi-MB join runs on the loop)."""
    encoding = _checked_encoding(request, limit)
    content = request.content
    declared = request.content_length
    if not content.is_eof() or declared is None or declared >= DECODE_INLINE_MAX_BYTES:
        return None
    try:
        data = content.read_nowait()
    except (RequestPayloadError, ContentEncodingError) as exc:
        raise _undecodable(encoding) from exc
    if len(data) > limit:
        raise too_large(limit)
    _small_buffer(content)
    return data


def _checked_encoding(request: web.Request, limit: int) -> str:
    """The body's content encoding, refused (415) when the server cannot decode it; a declared length
    over ``limit`` of an uncompressed body is refused (413) before anything is read."""
    encoding = request.headers.get("content-encoding", "").strip().lower()
    if encoding and encoding not in SERVER_DECODED:
        raise LocalReply(415, f"Unsupported Content-Encoding {encoding[:32]!r}: use gzip, deflate or none.",
                         type="invalid_request_error", code="unsupported_content_encoding")
    if not encoding and request.content_length is not None and request.content_length > limit:
        raise too_large(limit)
    return encoding


async def _read_pieces(request: web.Request, limit: int, into: Received | None = None) -> list[bytes]:
    encoding = _checked_encoding(request, limit)
    content = request.content
    pieces: list[bytes] = []
    size = 0
    try:
        # One buffered piece at a time: ``iter_any`` joined whatever was buffered at each step, a second
        # copy of a multi-MB body on the loop (issue 15). Not ``iter_chunks``: on the shared empty payload
        # of a request without a body it never ends (its end-of-body marker is given out once per process).
        while True:
            piece, _ = await content.readchunk()
            if not piece:
                if content.at_eof():
                    break
                continue  # the end of an HTTP chunk
            size += len(piece)
            if size > limit:
                raise too_large(limit)
            if into is None:
                pieces.append(piece)
            elif not into.add(piece):  # past the declared length: aiohttp's parser never gives that
                raise bad_request("Request body longer than its Content-Length.", code="invalid_body")
    except web.HTTPException:
        raise
    except (RequestPayloadError, ContentEncodingError) as exc:
        raise _undecodable(encoding) from exc
    _small_buffer(content)
    return pieces


def _small_buffer(content: StreamReader) -> None:
    """The body was read to its end: its reader's buffer, a deque (~760 bytes even empty) the request keeps
    for its life (an open stream's: issue 21), becomes an empty ``SmallQueue``; nothing is buffered after
    the end. Only for aiohttp's own reader with its usual layout."""
    buffer = getattr(content, "_buffer", None)
    if type(content) is StreamReader and type(buffer) is deque and content.at_eof():
        content._buffer = SmallQueue()  # type: ignore[assignment]


def _undecodable(encoding: str) -> LocalReply:
    return bad_request(f"Request body could not be decoded ({encoding or 'identity'}).",
                       code="invalid_encoding")
