"""Run the gateway: listen, serve, and drain cleanly on SIGTERM.

Shutdown follows what a Kubernetes sidecar needs: ``/readyz`` turns 503 at
once so endpoints stop routing to us; new connections are still accepted for
``server.grace_s`` (traffic already in flight towards us); open requests and
streams may finish until ``server.drain_s`` after the signal; whatever is still
open then ends with an explicit SSE error event (never a silent cut); exit 0.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
from collections import deque
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage

from gateway.app import build_app
from gateway.appstate import APP_STATE, AppState
from gateway.config_model import Config
from gateway.dispatch import API_ROUTES, dispatcher
from gateway.errors import error_body
from gateway.handler import EXCHANGE
from gateway.memory import pin_malloc_thresholds, trim_heap
from gateway.parsed_head import forget_parsed_head
from gateway.reload import Reloader
from gateway.small_queue import SmallQueue
from gateway.switching import share_the_gil

log = logging.getLogger("gateway.server")


class _JsonErrorHandler(web.RequestHandler):
    """aiohttp answers malformed HTTP (framing, bad or oversized headers) itself, before any route or
    middleware runs, in text/plain, with an ERROR line quoting the offending bytes (maybe a header with a
    key). OpenAI clients expect the JSON error shape, and a client's garbage is not our error: same
    status, OpenAI shape, no echo of the bytes, a DEBUG line naming the exception type only."""

    __slots__ = ("_head_timer", "_payload")

    # --- server.header_timeout_s: a request head must be complete in time (408, then close) -----------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._head_timer: asyncio.TimerHandle | None = None
        self._payload: Any = None
        if type(self._messages) is deque and not self._messages:  # aiohttp's queue of parsed requests
            # one request, a few when pipelined: aiohttp stops parsing past MAX_MSG_QUEUE_SIZE (32) queued
            self._messages = SmallQueue()  # type: ignore[assignment]
        super().connection_made(transport)
        self._arm_head_timer()

    def data_received(self, data: bytes) -> None:
        in_body = self._payload is not None and not self._payload.is_eof()
        before = self._request_count
        super().data_received(data)
        if self._request_count != before:  # a head is complete: its body has body_timeout_s
            self._cancel_head_timer()
            self._payload = self._messages[-1][1] if self._messages else None
            self._forget_parsed_head()
        elif not in_body and data:
            # These bytes start (or continue) a head that is still incomplete. A head that arrives whole
            # (most requests) needs no timer: arming before parsing made and cancelled one per request
            # (issue 21). b"": aiohttp resuming its parser (StreamReader -> resume_reading) while a body
            # is read, no new head; arming then left a timer on every open stream, and could 408 the
            # idle keep-alive connection afterwards.
            self._arm_head_timer()

    def _forget_parsed_head(self) -> None:
        """A head just parsed is kept once, as the request's headers: not also as the parser's lists of it
        nor as the message's raw pairs (bytes), for a stream's life (issue 21). ``request.raw_headers`` is
        then empty: nothing reads it (aiohttp's server does not, the gateway reads ``request.headers``)."""
        messages: Any = self._messages
        for i, (message, payload) in enumerate(messages):
            raw_headers = getattr(message, "raw_headers", None)  # a parse error queues an error marker
            if not raw_headers:
                continue
            parser = self._parser  # aiohttp's request parser: None once the connection closed
            if parser is not None and i == len(messages) - 1:  # the parser holds the last head only
                forget_parsed_head(parser, raw_headers, message.headers)
            messages[i] = (message._replace(raw_headers=()), payload)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_head_timer()
        self._defer_cancel()
        super().connection_lost(exc)

    def _defer_cancel(self) -> None:
        """A handler doing work other requests wait for (``Exchange.guard``: a coalescing leader's upstream
        call) is cancelled when that work is over, not now: aiohttp cancels the task it holds, so it holds
        none. Every other handler is cancelled at once (``handler_cancellation``)."""
        task, request = self._task_handler, self._current_request
        ex = request.get(EXCHANGE) if isinstance(request, web.Request) else None
        if task is not None and ex is not None and ex.guard is not None and ex.guard.defer(task.cancel):
            self._task_handler = None

    def _arm_head_timer(self) -> None:
        server = self._manager
        timeout = getattr(server, "head_timeout_s", None)
        if self._head_timer is None and timeout:
            self._head_timer = self._loop.call_later(timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        transport = self.transport
        if transport is None or self._request_in_progress:
            return
        on_timeout = getattr(self._manager, "on_head_timeout", None)
        if on_timeout is not None:
            on_timeout()
        body = error_body("The request head was not completed in time (server.header_timeout_s).",
                          "invalid_request_error", "request_timeout")
        transport.write(b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\n"
                             b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        self.force_close()
        transport.close()

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if request.writer.output_size > 0 or status < 400:
            return super().handle_error(request, status, exc, message)  # raises: nothing can be sent now
        if status >= 500:
            self.log_exception("Error handling request", exc_info=exc)
            text, kind, code = "The gateway hit an internal error.", "server_error", "internal_error"
        else:
            log.debug("malformed HTTP request", extra={"fields": {"event": "bad_http", "status": status,
                                                                  "error": type(exc).__name__}})
            first = (getattr(exc, "message", None) or message or "").split("\n", 1)[0]
            first = first.split(": b'")[0].split(": bytearray(")[0].strip(" :.")[:120]  # never echo the bytes
            text = f"Malformed HTTP request: {first or 'could not be parsed'}."
            kind, code = "invalid_request_error", "invalid_http_request"
        resp = web.Response(status=status, body=error_body(text, kind, code), content_type="application/json")
        resp.force_close()
        return resp

    def log_exception(self, *args: Any, **kw: Any) -> None:
        exc = kw.get("exc_info")
        if isinstance(exc, (BadHttpMessage, web.RequestPayloadError)):
            # The client's bad bytes (e.g. a body that claims deflate and is not, seen again after the
            # answer).
            log.debug(
                "malformed HTTP request", extra={"fields": {"event": "bad_http", "error": type(exc).__name__}}
            )
            return
        super().log_exception(*args, **kw)


class _JsonErrorServer(web.Server):
    def __call__(self) -> web.RequestHandler:  # the protocol factory: one handler per connection
        return _JsonErrorHandler(self, loop=self._loop, **self._kwargs)


class GatewayRunner(web.AppRunner):
    head_timeout_s: float | None = None

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _JsonErrorServer  # the same server; only its protocol factory differs
        server.head_timeout_s = self.head_timeout_s  # type: ignore[attr-defined]
        server.on_head_timeout = self._count_head_timeout  # type: ignore[attr-defined]
        if API_ROUTES in self.app:  # the API operations past the router and the middleware chain
            server.request_handler = dispatcher(self.app, server.request_handler)
        return server

    def _count_head_timeout(self) -> None:
        if APP_STATE in self.app:
            self.app[APP_STATE].metrics.decision("admission", "header_timeout")


def make_runner(app: web.Application, config: Config) -> web.AppRunner:
    runner = GatewayRunner(app, handle_signals=False, access_log=None if not config.server.access_log else
                           logging.getLogger("aiohttp.access"), handler_cancellation=True,
                           shutdown_timeout=1.0, keepalive_timeout=75.0, max_line_size=8190,
                           max_field_size=config.server.max_header_bytes)
    runner.head_timeout_s = config.server.header_timeout_s
    return runner


async def serve(config: Config, *, host: str, port: int, config_path: str | None = None,
                sock: socket.socket | None = None, stop: asyncio.Event | None = None,
                reuse_port: bool = False) -> int:
    """Serve until SIGTERM/SIGINT (or ``stop``), then drain. ``reuse_port``: one of N workers on the port."""
    app = build_app(config, config_path)
    runner = make_runner(app, config)
    await runner.setup()
    site: web.BaseSite
    if sock is not None:
        site = web.SockSite(runner, sock)
    else:
        site = web.TCPSite(runner, host, port, backlog=2048, reuse_address=True,
                           reuse_port=reuse_port or None)
    await site.start()
    settle_memory()
    share_the_gil()
    st = app[APP_STATE]
    reloader = Reloader(st, Path(config_path)) if config_path else None
    if reloader is not None:
        reloader.start()
    log.info("gateway listening", extra={"fields": {"event": "start", "address": _address(site),
                                                    "pid": os.getpid(), "upstreams": list(config.upstreams)}})
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    if reloader is not None:
        await reloader.stop()
    await drain(st, runner, st.config)  # the config in force now: drain_s may have been reloaded
    await runner.cleanup()
    log.info("gateway stopped", extra={"fields": {"event": "stop"}})
    return 0


async def drain(st: AppState, runner: web.AppRunner, config: Config) -> None:
    life = st.lifecycle
    loop = asyncio.get_running_loop()
    deadline = loop.time() + config.server.drain_s
    life.draining = True
    log.warning("draining", extra={"fields": {"event": "state_change", "state": "draining",
                                              "open_requests": len(life.active)}})
    await asyncio.sleep(min(config.server.grace_s, config.server.drain_s))
    for site in list(runner.sites):
        await site.stop()  # stop accepting; open connections continue
    if life.active:
        life.idle.clear()
        try:
            async with asyncio.timeout_at(deadline):
                while life.active:
                    await life.idle.wait()
                    life.idle.clear()
        except TimeoutError:
            pass
    if life.active:
        life.drain_expired = True
        log.warning(
            "drain deadline reached", extra={"fields": {"event": "drain_expired", "cut": len(life.active)}}
        )
        for task in list(life.active):
            task.cancel()
        await asyncio.wait(list(life.active), timeout=2.0)


def settle_memory() -> None:
    """After start-up: move everything alive now (modules, config, the built chain) out of the cyclic
    collector's generations, so a full collection under load walks only what requests allocate, and hand
    the heap freed by start-up back to the OS."""
    gc.collect()
    gc.freeze()
    # Requests make few cycles (the cache fill made one per request until it was removed): collect the
    # young generation every 10,000 allocations instead of 700, so a request's objects are mostly freed
    # by reference counting before a collection has to look at them.
    gc.set_threshold(10_000, 10, 10)
    pin_malloc_thresholds()
    trim_heap()


def _address(site: web.BaseSite) -> Any:
    return site.name
