"""Structured JSON logs: one line per request, one per state change.

Every line carries the request id of the request being served (a context
variable set by the handler), so a single ``grep`` follows a request through
policies. Nothing secret is logged: keys are never passed to the logger and
prompt text is not part of any line at INFO.
"""
from __future__ import annotations

import asyncio
import contextvars
import logging
import sys
import threading
import time
from typing import Any, TextIO

import orjson

from gateway.components import CONTINUED_FROM
from gateway.exchange import Exchange

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")
ACCESS = logging.getLogger("gateway.access")
log = logging.getLogger("gateway")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid = REQUEST_ID.get()
        if rid:
            line["request_id"] = rid
        fields = getattr(record, "fields", None)
        if fields:
            line.update(fields)
        if record.exc_info and record.exc_info[0] is not None:
            line["error"] = f"{record.exc_info[0].__name__}: {record.exc_info[1]}"[:500]
        return orjson.dumps(line).decode()


class JsonLines(logging.StreamHandler[TextIO]):
    """The stream handler ``setup_logging`` installs. Request lines written on the event loop
    (``write_soon``) are gathered and written together when the loop's current pass is over: one write
    (one syscall on a line-buffered stderr) for every request that ended in that pass, instead of one each.
    Any other line, a flush and logging's shutdown write what is pending first, so lines keep their order.
    """

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self._pending: list[str] = []
        self._lock = self.lock if self.lock is not None else threading.RLock()

    def write_soon(self, text: str) -> None:
        """Queue one finished line (with its terminator); the first of a pass schedules the write."""
        with self._lock:  # the handler's RLock itself: no acquire()/release() method calls per line
            pending = self._pending
            pending.append(text)
            first = len(pending) == 1
        if first:
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:  # not on a loop (a tool, a test): written at once
                self.flush()

    def flush(self) -> None:
        self.acquire()
        try:
            pending = self._pending
            if pending:
                text = pending[0] if len(pending) == 1 else "".join(pending)
                pending.clear()
                self.stream.write(text)
            if self.stream and hasattr(self.stream, "flush"):  # StreamHandler.flush, under the lock held
                self.stream.flush()
        except Exception:  # noqa: BLE001 - as StreamHandler.emit: a broken log stream must not fail a request
            self.handleError(logging.makeLogRecord({"msg": "request", "name": ACCESS.name}))
        finally:
            self.release()

    def emit(self, record: logging.LogRecord) -> None:
        if self._pending:  # the request lines queued before this one go first
            self.flush()
        super().emit(record)


def setup_logging(level: str = "info", stream: Any = None, access_log: bool = False) -> None:
    """JSON lines on stderr; aiohttp's access log at INFO only with ``server.access_log: true``."""
    # The logging HOWTO's optimisations: no caller lookup (a stack walk per line), no thread/process names.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    root = logging.getLogger()
    for old in root.handlers:
        old.flush()  # lines a replaced JsonLines still holds
    handler = JsonLines(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("asyncio").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.access").setLevel(logging.INFO if access_log else logging.WARNING)


def state_change(what: str, **fields: Any) -> None:
    """Log one state change (breaker opened, backend down/up): operators alert on these."""
    log.warning(what, extra={"fields": {"event": "state_change", **fields}})


def log_request(ex: Exchange) -> None:
    if not ACCESS.isEnabledFor(logging.INFO):
        return
    handler = direct_handler()
    if handler is None:
        ACCESS.info("request", extra={"fields": request_fields(ex)})
        return
    # The same line JsonFormatter writes, without a LogRecord, a format call and the handler chain; the
    # head and the fields in one dict (no second dict merged into it).
    head = {"ts": _wall_ms(), "level": "info", "logger": ACCESS.name, "msg": "request"}
    line = _fields(ex, head)
    if handler.terminator == "\n":
        text = orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE).decode()
    else:
        text = orjson.dumps(line).decode() + handler.terminator
    if type(handler) is JsonLines:
        handler.write_soon(text)
        return
    handler.acquire()
    try:
        stream = handler.stream
        stream.write(text)
        if hasattr(stream, "flush"):  # what handler.flush() does, under the lock already held
            stream.flush()
    except Exception:  # noqa: BLE001 - as StreamHandler.emit: a broken log stream must not fail a request
        handler.handleError(logging.makeLogRecord({"msg": "request", "name": ACCESS.name}))
    finally:
        handler.release()


_DIRECT = (logging.StreamHandler, JsonLines)  # exactly these: a subclass may write differently


def direct_handler() -> logging.StreamHandler[Any] | None:
    """The one handler an access line reaches when logging is set up as ``setup_logging`` does it (a
    single JSON stream handler on the root, no filters), else None: then the line goes through
    ``logging`` as usual (tests capturing logs, another handler added by an embedding application)."""
    logger: logging.Logger | None = ACCESS
    found: logging.StreamHandler[Any] | None = None
    while logger is not None:
        if logger.filters:
            return None
        for handler in logger.handlers:
            if found is not None or not isinstance(handler, logging.StreamHandler) \
                    or type(handler) not in _DIRECT or handler.filters \
                    or type(handler.formatter) is not JsonFormatter or handler.level > logging.INFO:
                return None
            found = handler
        if not logger.propagate:
            break
        logger = logger.parent
    return found


def _wall_ms() -> float:
    """The wall clock in seconds, to the millisecond: ``round(time.time(), 3)`` in integers (``round`` with
    digits formats the float as decimal text to round it: ~0.7 us, twice this)."""
    return (time.time_ns() + 500_000) // 1_000_000 / 1000


def _ms(seconds: float) -> float:
    """Milliseconds to three decimals: ``round(seconds * 1000, 3)`` without its decimal formatting (~0.6 us
    against ~0.13; the same figure but when the exact value is within a rounding error of a half)."""
    return round(seconds * 1_000_000) / 1000


def request_fields(ex: Exchange) -> dict[str, Any]:
    """The fields of the per-request log line."""
    return _fields(ex, {})


def _fields(ex: Exchange, head: dict[str, Any]) -> dict[str, Any]:
    """``head`` followed by the request's fields, in one dict."""
    request, record = ex.request, ex.record
    received = request.received_at
    first_token_at = record.first_token_at
    fields: dict[str, Any] = {
        **head,
        "event": "request",
        "request_id": request.request_id,
        "method": request.method,
        "path": request.path,
        "route": request.route_name,
        "model": request.model,
        "upstream": ex.target.upstream,
        "tenant": request.identity.tenant,
        "status": record.status,
        "duration_ms": _ms(record.ended_at - received),
        "ttft_ms": _ms(first_token_at - received) if first_token_at else None,
        "attempts": len(record.attempts),
        "cache": record.cache_result,
        "stream": request.stream,
    }
    usage = record.usage
    if usage is not None:
        fields["prompt_tokens"] = usage.prompt
        fields["completion_tokens"] = usage.completion
        fields["usage_estimated"] = usage.estimated
    if record.error_kind:
        fields["error"] = record.error_kind
    if record.stream_outcome:
        fields["stream_outcome"] = record.stream_outcome
    continued_from = ex.state.get(CONTINUED_FROM)
    if continued_from is not None:  # a broken stream finished by ``upstream``; usage is the sum of both
        fields["continued_from"] = continued_from
    return fields
