"""Structured JSON logs: one line per request, one per state change.

Every line carries the request id of the request being served (a context
variable set by the handler), so a single ``grep`` follows a request through
policies. Nothing secret is logged: keys are never passed to the logger and
prompt text is not part of any line at INFO.
"""
from __future__ import annotations

import contextvars
import logging
import sys
import time
from typing import Any

import orjson

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


def setup_logging(level: str = "info", stream: Any = None, access_log: bool = False) -> None:
    """JSON lines on stderr; aiohttp's access log at INFO only with ``server.access_log: true``."""
    # The logging HOWTO's optimisations: no caller lookup (a stack walk per line), no thread/process names.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    root = logging.getLogger()
    handler = logging.StreamHandler(stream or sys.stderr)
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
    fields = request_fields(ex)
    handler = direct_handler()
    if handler is None:
        ACCESS.info("request", extra={"fields": fields})
        return
    # The same line JsonFormatter writes, without a LogRecord, a format call and the handler chain.
    line = {"ts": round(time.time(), 3), "level": "info", "logger": ACCESS.name, "msg": "request", **fields}
    text = orjson.dumps(line).decode() + handler.terminator
    handler.acquire()
    try:
        handler.stream.write(text)
        handler.flush()
    except Exception:  # noqa: BLE001 - as StreamHandler.emit: a broken log stream must not fail a request
        handler.handleError(logging.makeLogRecord({"msg": "request", "name": ACCESS.name}))
    finally:
        handler.release()


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
            if found is not None or type(handler) is not logging.StreamHandler or handler.filters \
                    or type(handler.formatter) is not JsonFormatter or handler.level > logging.INFO:
                return None
            found = handler
        if not logger.propagate:
            break
        logger = logger.parent
    return found


def request_fields(ex: Exchange) -> dict[str, Any]:
    """The fields of the per-request log line."""
    duration = ex.record.ended_at - ex.request.received_at
    fields: dict[str, Any] = {
        "event": "request",
        "request_id": ex.request.request_id,
        "method": ex.request.method,
        "path": ex.request.path,
        "route": ex.request.route_name,
        "model": ex.request.model,
        "upstream": ex.target.upstream,
        "tenant": ex.request.tenant,
        "status": ex.record.status,
        "duration_ms": round(duration * 1000, 3),
        "ttft_ms": round((ex.record.first_token_at - ex.request.received_at) * 1000,
                         3) if ex.record.first_token_at else None,
        "attempts": len(ex.record.attempts),
        "cache": ex.record.cache_result,
        "stream": ex.request.stream,
    }
    if ex.record.usage is not None:
        fields["prompt_tokens"] = ex.record.usage.prompt
        fields["completion_tokens"] = ex.record.usage.completion
        fields["usage_estimated"] = ex.record.usage.estimated
    if ex.record.error_kind:
        fields["error"] = ex.record.error_kind
    if ex.record.stream_outcome:
        fields["stream_outcome"] = ex.record.stream_outcome
    return fields
