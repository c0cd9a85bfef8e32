"""Every provider fixture (tests/data/providers) read by the core stream reader,
the commit point and the cache.

For each streamed case, delivered in the fixture's own chunks: the inspector finds the first token,
the provider's usage (cached and reasoning parts included), finish reasons, the model and a clean
end; the commit point commits; the cache assembles a canonical answer whose replay in the other
mode assembles back to the same answer (cross-mode replay).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.mock.fixtures import DEFAULT_DIR, chunks_of
from gateway.sse import StreamInspector
from policies.cache.canonical import answer_from_json, answer_from_sse
from policies.cache.replay import render_sse
from policies.resilience.commit import peek


def all_cases() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(Path(DEFAULT_DIR).glob("*.json")):
        for name, case in orjson.loads(path.read_bytes())["cases"].items():
            out.append((f"{path.stem}/{name}", case))
    return out


CASES = all_cases()
STREAMS = [(n, c) for n, c in CASES if c["stream"]]


def operation(case: dict[str, Any]) -> str:
    return {"/v1/responses": "responses", "/v1/completions": "completions"}.get(case["path"], "chat")


@pytest.mark.parametrize(("name", "case"), STREAMS, ids=[n for n, _ in STREAMS])
def test_inspector_reads_every_provider(name: str, case: dict[str, Any]) -> None:
    insp = StreamInspector(clock=lambda: 1.0)
    for chunk in chunks_of(case):
        insp.feed(chunk)
    expect = case["expect"]
    assert (insp.first_token_at > 0) == expect["tokens"]
    usage = insp.usage
    got = None if usage is None else [usage.prompt, usage.completion, usage.cached_prompt, usage.reasoning]
    assert got == expect["usage"]
    assert insp.finish_reasons == expect["finish_reasons"] and insp.clean_end
    assert insp.model == expect["model"]


async def _body(chunks: list[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


@pytest.mark.parametrize(("name", "case"), STREAMS, ids=[n for n, _ in STREAMS])
async def test_commit_point_and_cross_mode_replay(name: str, case: dict[str, Any]) -> None:
    peeked = await peek(_body(chunks_of(case)), sse=True)
    assert peeked.verdict == "commit"
    op = operation(case)
    answer = answer_from_sse(op, case["body"].encode())
    assert answer is not None
    replayed = answer_from_sse(op, render_sse(op, answer, include_usage=True))
    assert replayed == answer
    again = answer_from_json(op, orjson.dumps(answer))
    assert again == answer
    if op == "chat":
        message = answer["choices"][0]["message"]
        if message.get("tool_calls"):
            assert message["content"] is None and all(c["id"] for c in message["tool_calls"])


def test_stream_reasons_agrees_with_the_assembly_on_every_provider() -> None:
    """Where the store-time reading of a stream's bytes answers, the assembly finds the same finish reasons;
    most providers' streams are in the form it reads (the rest are assembled at store time, as before)."""
    from policies.cache.canonical import finish_reasons, stream_reasons

    read = 0
    for _name, case in STREAMS:
        op = operation(case)
        if op == "responses":
            continue
        body = case["body"].encode()
        found = stream_reasons(body)
        assembled = answer_from_sse(op, body)
        if found is not None:
            read += 1
            assert assembled is not None and finish_reasons(op, assembled) == found, _name
    assert read >= 5
