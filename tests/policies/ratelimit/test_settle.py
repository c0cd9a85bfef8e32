"""Estimating a request before the call and settling it when the answer ends, however it ends."""
from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from gateway.exchange import Exchange, Usage
from gateway.sse import StreamInspector
from policies.ratelimit.model import Limit, LimitSet
from policies.ratelimit.runtime import Grant
from policies.ratelimit.settle import estimate, settling, used_tokens

LS = LimitSet("upstream", "u:x", "x", (Limit("tpm", "bucket", 1e6, 1e4, tokens=True),))


class Tok:
    """The tokenizer calls estimate() makes, with fixed answers (its encoding is loaded)."""

    def encoding_name_for(self, model: str) -> str:
        return "o200k_base"

    def is_loaded(self, encoding: str) -> bool:
        return True

    def count_request(self, operation: str, body: dict[str, Any]) -> int:
        return 100

    def max_output_tokens(self, body: dict[str, Any]) -> int | None:
        values = [v for k in ("max_tokens", "max_completion_tokens",
                              "max_output_tokens") if isinstance(v := body.get(k), int)]
        return max(values) if values else None


class St:
    tokenizer = Tok()


class Recorder:
    def __init__(self) -> None:
        self.settled: list[tuple[Grant, int]] = []

    def settle(self, grant: Grant, used: int) -> None:
        grant.settled = True
        self.settled.append((grant, used))


def grant(tokens: int = 600, prompt: int = 100) -> Grant:
    return Grant(LS, (tokens,), "m", False, tokens, prompt, True)


@pytest.mark.parametrize(("operation", "body", "expected"), [
    ("chat", {"model": "m", "messages": [], "max_tokens": 50, "max_completion_tokens": 80}, 180),
    ("chat", {"model": "m", "messages": []}, 1124),
    ("chat", {"model": "m", "messages": [], "max_tokens": 50, "n": 3}, 250),
    ("responses", {"model": "m", "input": "x", "max_output_tokens": 7}, 107),
    ("embeddings", {"model": "m", "input": "x", "max_tokens": 50}, 100),
])
def test_estimate(make_exchange: Callable[..., Exchange], operation: str, body: dict[str, Any],
                  expected: int) -> None:
    """Prompt plus the largest output limit (a default when none; times n choices); embeddings: prompt
    only."""
    ex = make_exchange(body, operation=operation)
    assert estimate(St(), ex, 1024) == (100, expected)  # type: ignore[arg-type]
    assert ex.record.prompt_tokens == 100  # memoised for every other feature


def test_used_tokens_sources(make_exchange: Callable[..., Exchange]) -> None:
    """Reported usage wins; then the inspector's, the JSON tail's, produced chunks; errors cost nothing."""
    ex = make_exchange()
    assert used_tokens(ex, grant(), 500, b"") == 0
    assert used_tokens(ex, grant(), 200, b"") == 600  # no usage anywhere in a JSON answer: the reservation
    assert used_tokens(ex, grant(), 200, b'{"x":1,"usage":{"prompt_tokens":9,"completion_tokens":4}}') == 13
    inspector = StreamInspector(lambda: 0.0)
    for _ in range(3):  # three content chunks, about a token each
        inspector.feed(b'data: {"choices":[{"delta":{"content":"a"}}]}\n\n')
    ex.view = inspector
    assert used_tokens(ex, grant(), 200, b"") == 103
    inspector.usage = Usage(prompt=90, completion=20)
    assert used_tokens(ex, grant(), 200, b"") == 110
    ex.record.reported_usage = Usage(prompt=95, completion=30)
    assert used_tokens(ex, grant(), 200, b"") == 125


async def chunks(parts: list[bytes]) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def test_settles_once_at_the_end(make_exchange: Callable[..., Exchange]) -> None:
    """A body read to its end settles once, with usage found in its last chunks."""
    rec = Recorder()
    body = settling(chunks([b'{"choices":[],', b'"usage":{"prompt_tokens":5,', b'"completion_tokens":6}}']),
                        make_exchange(), rec, grant(), 200, sse=False)  # type: ignore[arg-type]
    assert [c async for c in body] and rec.settled[0][1] == 11
    await body.aclose()
    assert len(rec.settled) == 1


async def test_clean_json_answer_reports_its_usage_once(make_exchange: Callable[..., Exchange]) -> None:
    """The usage read from a complete 2xx JSON answer becomes ``reported_usage``: a second settlement of
    the same answer (client and upstream limits) and the relay read it instead of the bytes again."""
    rec = Recorder()
    ex = make_exchange()
    parts = [b'{"choices":[],', b'"usage":{"prompt_tokens":5,', b'"completion_tokens":6}}']
    inner = settling(chunks(parts), ex, rec, grant(), 200, sse=False)  # type: ignore[arg-type]
    outer = settling(inner, ex, rec, grant(), 200, sse=False)  # type: ignore[arg-type]
    assert b"".join([c async for c in outer]) == b"".join(parts)
    assert ex.record.reported_usage == Usage(prompt=5, completion=6)
    assert [used for _, used in rec.settled] == [11, 11]


@pytest.mark.parametrize("status", [200, 302])
async def test_cut_or_non_2xx_answer_reports_nothing(make_exchange: Callable[..., Exchange],
                                                     status: int) -> None:
    """A JSON answer that failed mid-body, or a non-2xx one, is still charged its tail's usage, but that
    figure is not recorded as the provider's report of the request."""
    rec = Recorder()
    ex = make_exchange()

    async def cut() -> AsyncIterator[bytes]:
        yield b'{"usage":{"prompt_tokens":5,"completion_tokens":6}}'
        if status == 200:
            raise ConnectionResetError

    body = settling(cut(), ex, rec, grant(), status, sse=False)  # type: ignore[arg-type]
    with pytest.raises(ConnectionResetError) if status == 200 else contextlib.nullcontext():
        async for _ in body:
            pass
    assert rec.settled[0][1] == 11 and ex.record.reported_usage is None


async def test_closed_unread_body_settles(make_exchange: Callable[..., Exchange]) -> None:
    """A body closed before its first chunk (a discarded attempt, a gone client) still settles."""
    rec = Recorder()
    closed: list[bool] = []

    async def inner() -> AsyncIterator[bytes]:
        try:
            yield b"never read"
        finally:
            closed.append(True)

    gen = inner()
    await gen.__anext__()  # started, so aclose runs its finally
    body = settling(gen, make_exchange(), rec, grant(), 200, sse=True)  # type: ignore[arg-type]
    await body.aclose()
    assert closed == [True] and len(rec.settled) == 1


async def test_failure_mid_body_settles(make_exchange: Callable[..., Exchange]) -> None:
    """An exception from the upstream body settles before it propagates."""
    rec = Recorder()

    async def broken() -> AsyncIterator[bytes]:
        yield b"data: x\n\n"
        raise ConnectionResetError

    body = settling(broken(), make_exchange(), rec, grant(), 200, sse=True)  # type: ignore[arg-type]
    with pytest.raises(ConnectionResetError):
        async for _ in body:
            pass
    assert len(rec.settled) == 1
