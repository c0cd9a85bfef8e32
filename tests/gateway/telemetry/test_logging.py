"""The per-request log line: the direct write is the line ``logging`` would have written."""
from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import orjson
import pytest

from gateway.components import CONTINUED_FROM
from gateway.exchange import Exchange, Usage
from gateway.telemetry.logging import (
    ACCESS,
    REQUEST_ID,
    direct_handler,
    log_request,
    request_fields,
    setup_logging,
)
from tests.support.exchange import build_exchange


@pytest.fixture
def root_logging() -> Iterator[None]:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, ACCESS.level)
    try:
        yield
    finally:
        root.handlers[:], _, _ = saved
        root.setLevel(saved[1])
        ACCESS.setLevel(saved[2])


def _exchange() -> Exchange:
    return build_exchange(request_id="rid-1", status=200, usage=Usage(prompt=3, completion=2),
                          stream_outcome="done", ended_at=1.5, received_at=1.0)


def test_direct_line_equals_the_logging_line(root_logging: None) -> None:
    fast, slow = io.StringIO(), io.StringIO()
    setup_logging("info", stream=fast)
    assert direct_handler() is logging.getLogger().handlers[0]
    ex = _exchange()
    token = REQUEST_ID.set("rid-1")
    try:
        log_request(ex)
        setup_logging("info", stream=slow)
        logging.getLogger().addHandler(logging.NullHandler())  # two handlers: the logging path
        assert direct_handler() is None
        log_request(ex)
    finally:
        REQUEST_ID.reset(token)
    a, b = orjson.loads(fast.getvalue()), orjson.loads(slow.getvalue())
    assert abs(a.pop("ts") - b.pop("ts")) < 5
    assert a == b
    assert a["request_id"] == "rid-1" and a["prompt_tokens"] == 3 and a["duration_ms"] == 500.0
    assert fast.getvalue().endswith("\n") and fast.getvalue().count("\n") == 1


def test_no_line_below_info_and_a_filter_takes_the_logging_path(root_logging: None) -> None:
    out = io.StringIO()
    setup_logging("warning", stream=out)
    log_request(_exchange())
    assert out.getvalue() == ""
    setup_logging("info", stream=out)
    logging.getLogger().handlers[0].addFilter(lambda record: False)
    assert direct_handler() is None
    log_request(_exchange())
    assert out.getvalue() == ""  # the filter was honoured: the line went through logging


def test_a_continued_stream_is_marked_in_the_line() -> None:
    """The upstream whose stream broke is named (``upstream`` finished it); an unbroken one has no field."""
    ex = _exchange()
    assert "continued_from" not in request_fields(ex)
    ex.state.set(CONTINUED_FROM, "primary")
    assert request_fields(ex)["continued_from"] == "primary"


def test_direct_line_field_order(root_logging: None) -> None:
    """The direct line is one JSON object: the head, then the request's fields in their fixed order."""
    out = io.StringIO()
    setup_logging("info", stream=out)
    ex = _exchange()
    ex.record.error_kind = "idle_timeout"
    ex.state.set(CONTINUED_FROM, "primary")
    log_request(ex)
    line = orjson.loads(out.getvalue())
    assert list(line) == ["ts", "level", "logger", "msg", "event", "request_id", "method", "path", "route",
                          "model", "upstream", "tenant", "status", "duration_ms", "ttft_ms", "attempts",
                          "cache", "stream", "prompt_tokens", "completion_tokens", "usage_estimated", "error",
                          "stream_outcome", "continued_from"]
    head = (line["level"], line["logger"], line["msg"], line["ttft_ms"])
    assert head == ("info", "gateway.access", "request", None)
