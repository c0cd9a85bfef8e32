"""The per-request log line: the direct write is the line ``logging`` would have written."""
from __future__ import annotations

import io
import logging
import random
import time
from collections.abc import Iterator

import orjson
import pytest

from gateway.components import CONTINUED_FROM
from gateway.exchange import Exchange, Usage
from gateway.telemetry.logging import (
    ACCESS,
    REQUEST_ID,
    JsonLines,
    _ms,
    _wall_ms,
    direct_handler,
    log_request,
    request_fields,
    setup_logging,
)
from tests.support.exchange import build_exchange
from tests.support.until import until


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


class CountingStream(io.StringIO):
    """A stream that counts its writes (one write is one syscall on a real stderr)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


async def test_lines_of_one_loop_pass_are_written_together(root_logging: None) -> None:
    """On the loop, the request lines of one pass wait for its end and go out in one write."""
    out = CountingStream()
    setup_logging("info", stream=out)
    assert type(direct_handler()) is JsonLines
    for _ in range(3):
        log_request(_exchange())
    assert out.getvalue() == "" and out.writes == 0
    await until(lambda: out.getvalue().count("\n") == 3)
    assert out.writes == 1
    assert [orjson.loads(line)["request_id"] for line in out.getvalue().splitlines()] == ["rid-1"] * 3


def test_off_the_loop_a_line_is_written_at_once(root_logging: None) -> None:
    """The control: with no running loop the line is written before ``log_request`` returns."""
    out = CountingStream()
    setup_logging("info", stream=out)
    log_request(_exchange())
    assert out.getvalue().count("\n") == 1 and out.writes == 1


async def test_other_lines_keep_their_order(root_logging: None) -> None:
    """A line logged the usual way writes the pending request lines first; so does a flush, and replacing
    the handler (``setup_logging`` again) loses none of them."""
    out = io.StringIO()
    setup_logging("info", stream=out)
    log_request(_exchange())
    logging.getLogger("gateway").warning("after")
    assert [orjson.loads(line)["msg"] for line in out.getvalue().splitlines()] == ["request", "after"]
    log_request(_exchange())
    setup_logging("info", stream=io.StringIO())
    assert [orjson.loads(line)["msg"] for line in out.getvalue().splitlines()] == ["request", "after",
                                                                                  "request"]


def test_the_lines_times_are_rounded_to_the_millisecond_as_round_does() -> None:
    """``_ms`` and ``_wall_ms`` give ``round(x, 3)``'s figures without its decimal formatting."""
    rng = random.Random(21)
    for _ in range(100_000):
        seconds = rng.random() * rng.choice((0.01, 1.0, 100.0, 10_000.0))
        assert _ms(seconds) == round(seconds * 1000, 3)
    assert _ms(0.0) == 0.0 and _ms(1.0) == 1000.0 and _ms(0.0123456) == 12.346
    before = round(time.time(), 3)
    assert before - 0.001 <= _wall_ms() <= round(time.time(), 3) + 0.001
    now = _wall_ms()
    assert now == round(now, 3)  # whole milliseconds
