"""One pooled HTTP client per upstream: the innermost layer of the onion.

``send`` returns as soon as the upstream's status and headers arrive; the body
is an async generator that reads each chunk as it comes (``readany``), so
nothing is buffered. Failures are mapped to ``UpstreamFailure`` kinds that the
retry policy and metrics understand. Redirects are never followed. A body that
is not read to its end closes the connection instead of returning it to the
pool, so an abandoned attempt can never leak half a response into the next one.
"""
from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Mapping
from dataclasses import dataclass
from typing import Protocol

import aiohttp
from aiohttp.http_exceptions import HttpProcessingError
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.config_common import TimeoutsConfig
from gateway.config_model import UpstreamConfig
from gateway.errors import LocalReply, UpstreamFailure
from gateway.exchange import Attempt, Exchange, UpstreamResponse
from gateway.forward_headers import forward_request_headers, forward_response_headers
from gateway.rawhttp.client import RawResponse, fetch
from gateway.rawhttp.errors import ConnectFailed, ConnectTimeout
from gateway.rawhttp.head import request_head, request_target
from gateway.rawhttp.origin import Origin
from gateway.rawhttp.pool import RawPool


class _Response(Protocol):
    """What ``send`` and the body need of an answer: ``aiohttp.ClientResponse`` or the raw client's."""

    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> CIMultiDictProxy[str]: ...

    @property
    def content(self) -> aiohttp.StreamReader: ...

    def release(self) -> object: ...

    def close(self) -> None: ...


_RAW_ONE_WRITE = 1 << 16  # a request body up to this size is copied behind its head: one write


@dataclass(slots=True)
class UpstreamClient:
    """The pooled client of one named upstream (or tool provider)."""

    name: str
    base_url: str
    session: aiohttp.ClientSession
    timeouts: TimeoutsConfig
    api_key: str | None = None
    extra_headers: Mapping[str, str] = ()  # type: ignore[assignment]
    forward_client_key: bool = False  # keys mode: forward the client's gateway key (set on purpose in config)
    raw: RawPool | None = None  # ``pool.client: raw``: ``send`` goes through gateway/rawhttp, not ``session``

    @classmethod
    def create(cls, name: str, cfg: UpstreamConfig) -> UpstreamClient:
        connector = aiohttp.TCPConnector(
            limit=cfg.pool.max_connections,
            keepalive_timeout=cfg.pool.keepalive_s,
            enable_cleanup_closed=True,
            ttl_dns_cache=300,
        )
        session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=True,
            trust_env=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=cfg.timeouts.connect_s),
            skip_auto_headers=("User-Agent",),
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        return cls(
            name=name,
            base_url=cfg.base_url.rstrip("/"),
            session=session,
            timeouts=cfg.timeouts,
            api_key=cfg.api_key or None,
            extra_headers=dict(cfg.headers),
            forward_client_key=cfg.forward_client_key,
            raw=_raw_pool(cfg) if cfg.pool.client == "raw" else None,
        )

    async def close(self) -> None:
        if self.raw is not None:
            await self.raw.close()
        await self.session.close()

    def url_for(self, ex: Exchange) -> str:
        url = self.base_url + ex.request.upstream_path
        return f"{url}?{ex.request.query_string}" if ex.request.query_string else url

    async def send(self, ex: Exchange, timeouts: TimeoutsConfig | None = None) -> UpstreamResponse:
        t = timeouts or self.timeouts
        loop = asyncio.get_running_loop()
        attempt = Attempt(upstream=self.name, model=ex.target.model, started=loop.time())
        ex.record.attempts.append(attempt)
        # In keys mode (the identity carries the matched key) the client's credential is its gateway key.
        forward = ex.request.identity.key is None or self.forward_client_key
        headers = forward_request_headers(ex.request.headers, self.extra_headers, self.api_key, forward)
        headers.update(ex.upstream_headers)
        first_byte_deadline = min(attempt.started + t.first_byte_s, ex.request.deadline)
        # The first-byte deadline is kept by the body's own read timer, armed here: its first read waits for
        # the same deadline, so the handle scheduled now serves it too. ``asyncio.timeout_at`` cost a Timeout,
        # a timer scheduled and cancelled and its context manager, ~10 us a request under uvloop (issue 21).
        timer = _ReadTimer(loop)
        timer.arm(first_byte_deadline)
        resp: _Response
        try:
            method = ex.request.method
            if self.raw is not None:
                resp = await self._send_raw(self.raw, ex, headers, t)
            else:
                resp = await self.session.request(
                    method,
                    self.url_for(ex),
                    data=ex.body_bytes() if method not in ("GET", "HEAD") else None,
                    headers=headers,
                    allow_redirects=False,
                    auto_decompress=True,
                    timeout=self.session.timeout if t is self.timeouts else _connect_timeout(t),
                )  # route override
        except BaseException as exc:
            timer.cancel()
            if timer.disarm() and isinstance(exc, asyncio.CancelledError):
                exc = TimeoutError()  # our deadline cancelled the send, as ``asyncio.timeout_at`` reports it
            attempt.ended = loop.time()
            ex.record.upstream_s += attempt.ended - attempt.started
            failure = _map_send_error(exc, self.name, ex.request.deadline <= attempt.ended)
            attempt.outcome = failure.kind if failure else "cancelled"
            if failure is None:
                raise
            raise failure from exc
        timer.disarm()  # a deadline that passed as the answer came is let go, as ``asyncio.timeout_at`` does
        ex.record.upstream_s += loop.time() - attempt.started
        attempt.status = resp.status
        if 300 <= resp.status < 400:
            timer.cancel()
            resp.close()
            attempt.outcome, attempt.ended = "redirect", loop.time()
            raise LocalReply(
                502,
                f"Upstream {self.name} answered with a redirect ({resp.status}); "
                "redirects are never followed.",
                type="upstream_error",
                code="upstream_redirect",
            )
        decompressed = "content-encoding" in resp.headers
        out_headers = forward_response_headers(resp.headers, decompressed)
        if isinstance(resp, RawResponse):
            resp.forget_headers()  # a stream can stay open for minutes: its parsed head need not
        body = _Body(self._body(resp, ex, attempt, t, first_byte_deadline, timer), resp, timer)
        return UpstreamResponse(status=resp.status, headers=out_headers, body=body, upstream=self.name)

    async def _send_raw(
        self, raw: RawPool, ex: Exchange, headers: CIMultiDict[str], t: TimeoutsConfig
    ) -> RawResponse:
        """The request on the raw client: head (and a small body) in one write, the answer's head back."""
        method = ex.request.method
        body = ex.body_bytes() if method not in ("GET", "HEAD") else None
        if "accept" not in headers:
            headers["Accept"] = "*/*"  # as aiohttp sends it
        if "accept-encoding" not in headers:
            headers["Accept-Encoding"] = "identity"  # a compressed answer is still decoded by the parser
        # url_for is base_url + the rest (a subclass may add to the query: ToolClient's key parameter)
        target = request_target(raw.origin.prefix + self.url_for(ex)[len(self.base_url):])
        host = headers.popone("Host", raw.origin.host_header)  # a configured Host wins, as on aiohttp
        head = request_head(method, target, host, headers.items(), None if body is None else len(body))
        if body and len(body) <= _RAW_ONE_WRITE:
            head, body = head + body, None
        return await fetch(raw, head, body or None, method == "HEAD", t.connect_s)

    async def _body(
        self,
        resp: _Response,
        ex: Exchange,
        attempt: Attempt,
        t: TimeoutsConfig,
        first_byte_deadline: float,
        timer: _ReadTimer,
    ) -> AsyncIterator[bytes]:
        """The answer's chunks as they arrive. Per chunk: one ``readany`` (at once when the chunk is already
        buffered), the timer's two attribute updates and one clock read; no coroutine of our own. ``timer`` is
        the send's, still scheduled for the first-byte deadline."""
        loop = asyncio.get_running_loop()
        content = resp.content
        record, total = ex.record, ex.request.deadline
        clean = False
        committed = False
        deadline = first_byte_deadline
        try:
            while True:
                waited_from = loop.time()
                timer.arm(deadline if deadline < total else total)
                try:
                    chunk = await content.readany()
                except BaseException as exc:
                    failure = self._read_failure(exc, timer.disarm(), loop.time() >= total, committed)
                    if failure is None:
                        raise
                    raise failure from exc
                timer.disarm()
                now = loop.time()
                record.upstream_s += now - waited_from
                if not chunk:
                    clean = True
                    attempt.outcome = "ok" if resp.status < 400 else f"http_{resp.status}"
                    return
                committed = True
                deadline = now + t.idle_s
                yield chunk
        except UpstreamFailure as failure:
            attempt.outcome = failure.kind
            raise
        except BaseException:
            attempt.outcome = "cancelled"
            raise
        finally:
            timer.cancel()
            attempt.ended = loop.time()
            if clean:
                resp.release()
            else:
                resp.close()  # never return a half-read connection to the pool

    def _read_failure(self, exc: BaseException, timed_out: bool, past_total: bool,
                      committed: bool) -> UpstreamFailure | None:
        """What a failed read raises instead of ``exc`` (None: ``exc`` itself): our timer's cancellation (or
        any ``TimeoutError``) as a timeout, a lost or broken connection as a reset (``HttpProcessingError``:
        the raw client on aiohttp's pure-Python parser)."""
        if (timed_out and isinstance(exc, asyncio.CancelledError)) or isinstance(exc, TimeoutError):
            kind = "total_timeout" if past_total else (
                "idle_timeout" if committed else "timeout_before_first_byte")
            return UpstreamFailure(kind, f"Upstream {self.name}: {kind.replace('_', ' ')}",
                                   upstream=self.name, committed=committed)
        if isinstance(exc, (aiohttp.ClientError, OSError, HttpProcessingError)):
            kind = "reset_mid_stream" if committed else "reset_before_response"
            return UpstreamFailure(kind, f"Upstream {self.name} connection lost: {type(exc).__name__}",
                                   upstream=self.name, committed=committed)
        return None


class _ReadTimer:
    """The read deadline of one body, kept with (mostly) one timer handle.

    ``asyncio.timeout_at`` around each read schedules and cancels a timer per
    chunk (~5 us, the largest per-chunk cost of the relay). Here the handle stays
    in place while deadlines only move later, and when it fires early it re-arms
    for the current deadline. It cancels the reading task only while that task is
    waiting on a read (between ``arm`` and ``disarm``: never while the consumer
    writes the last chunk to a slow client), and ``disarm`` tells when that
    cancellation was its own and nobody else asked to cancel, which the reader
    turns into a timeout exactly as ``asyncio.timeout`` does, so a client
    disconnect at the same moment still wins. Arming is two attribute writes
    and a dict lookup (``current_task`` given the loop: no ``getpid`` system
    call, which ``get_running_loop`` makes on every call); the read itself is
    the stream reader's own, with no coroutine of ours around it.
    """

    __slots__ = ("_cancelling", "_expired", "_handle", "_handle_when", "_loop", "_task", "_when")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._handle: asyncio.TimerHandle | None = None
        self._handle_when = 0.0
        self._when = 0.0
        self._task: asyncio.Task[object] | None = None
        self._cancelling = 0
        self._expired = False

    def arm(self, when: float) -> None:
        """The current task is about to wait on a read that must end by ``when``."""
        task = asyncio.current_task(self._loop)
        assert task is not None
        self._task, self._when, self._cancelling, self._expired = task, when, task.cancelling(), False
        if self._handle is None or when < self._handle_when:
            self.cancel()
            self._handle, self._handle_when = self._loop.call_at(when, self._fire), when

    def disarm(self) -> bool:
        """After the read: True when our timer cancelled it and nobody else asked to cancel the task."""
        task, self._task = self._task, None
        if not self._expired or task is None:
            return False
        self._expired = False
        return task.uncancel() <= self._cancelling

    def _fire(self) -> None:
        self._handle = None
        if self._task is None:
            return  # nobody is waiting: the next read arms again
        if self._when > self._handle_when:
            self._handle, self._handle_when = self._loop.call_at(self._when, self._fire), self._when
            return
        self._expired = True
        self._task.cancel()

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


def _raw_pool(cfg: UpstreamConfig) -> RawPool:
    origin = Origin.from_url(cfg.base_url)
    return RawPool(origin, cfg.pool.max_connections, cfg.pool.keepalive_s)


def _connect_timeout(t: TimeoutsConfig) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=None, sock_connect=t.connect_s)


class _Body:
    """The body iterator. A generator's ``aclose`` skips its ``finally`` when it never started,
    so a discarded answer (a 503 the retry policy drops unread) would hold its connection
    until garbage collection; this closes the response whatever happened. ``__anext__``
    hands out the generator's own awaitable: no extra frame per chunk."""

    __slots__ = ("_gen", "_resp", "_timer")

    def __init__(self, gen: AsyncIterator[bytes], resp: _Response, timer: _ReadTimer) -> None:
        self._gen, self._resp, self._timer = gen, resp, timer

    def __aiter__(self) -> _Body:
        return self

    def __anext__(self) -> Awaitable[bytes]:
        return self._gen.__anext__()

    async def aclose(self) -> None:
        try:
            await self._gen.aclose()  # type: ignore[attr-defined]
        finally:
            self._timer.cancel()  # a body dropped unread: its first-byte timer is still scheduled
            self._resp.close()  # no-op after a clean release


def _map_send_error(exc: BaseException, name: str, past_deadline: bool) -> UpstreamFailure | None:
    if isinstance(exc, (aiohttp.ConnectionTimeoutError, ConnectTimeout)):
        return UpstreamFailure("connect_timeout", f"Upstream {name}: connect timeout", upstream=name)
    if isinstance(exc, TimeoutError):
        kind = "total_timeout" if past_deadline else "timeout_before_first_byte"
        return UpstreamFailure(
            kind, f"Upstream {name}: no response before the first-byte timeout", upstream=name
        )
    if isinstance(exc, aiohttp.ClientConnectorError):
        # Named, never addressed: the OS message ("Connect call failed ('10.0.0.7', 443)") and the DNS one
        # carry the provider's address, which a client has no business learning.
        return UpstreamFailure(
            "connect_error", f"Upstream {name} unreachable ({_reason(exc)})", upstream=name
        )
    if isinstance(exc, ConnectFailed):
        return UpstreamFailure("connect_error", f"Upstream {name} unreachable ({exc.reason})", upstream=name)
    if isinstance(exc, (aiohttp.ClientError, OSError)):
        return UpstreamFailure(
            "reset_before_response",
            f"Upstream {name} closed the connection before answering ({type(exc).__name__})",
            upstream=name,
        )
    return None


def _reason(exc: aiohttp.ClientConnectorError) -> str:
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return "name resolution failed"
    code = exc.os_error.errno
    return os.strerror(code).lower() if isinstance(code, int) and code > 0 else "connect failed"
