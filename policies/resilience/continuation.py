"""Mid-stream continuation (issue 18): a committed chat stream that breaks is finished by a fallback.

``Spliced`` relays a committed ``/chat/completions`` stream event by event, keeping what the
client has received so far (``SoFar``: the id, the plain text, the content chunks). When the
stream breaks after the commit point (a reset or idle timeout from the upstream client, an
error event, a malformed event, or an end without ``[DONE]`` nor a finish reason) and the
answer so far is plain text, it asks ``resume`` (the retry policy: the next targets whose
upstream has ``continuation`` set) for the rest, with the text so far as an assistant
prefill, and splices that stream into the same client stream: the original ``id``,
``created``, ``model`` and choice index, the role chunk dropped, the usage's completion
tokens summed; a final ``: x-gateway-continued`` SSE comment (headers are long gone) and
``[DONE]``. When nothing can continue (tool-call deltas, no target, the fallback refused
the prefill, the budget is spent) the stream ends exactly as it would have without this:
the original failure (never the fallback's refusal).
"""
from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import orjson

from gateway.errors import UpstreamFailure
from gateway.exchange import UpstreamResponse
from gateway.sse import EventSplitter, parse_event
from policies.resilience.commit import close_body

Mode = Literal["prefill", "continue_final_message", "none"]
# (text so far, content chunks so far) -> (the fallback's committed stream, its upstream name) or None
Resume = Callable[[str, int], Awaitable[tuple[UpstreamResponse, str] | None]]
# (outcome, upstream or "") -> None: metric and log line (continued | not_plain | no_target | failed ...)
Report = Callable[[str, str], None]
Verdict = Literal["ok", "done", "error", "malformed"]
DONE = b"data: [DONE]\n\n"


class Reader(Protocol):
    """What the client has received of the answer (one per API dialect)."""

    text: list[str]
    chunks: int
    plain: bool
    finished: bool
    done: bool

    def look(self, event: bytes) -> Verdict: ...

    def closing(self) -> bytes:
        """The end marker to add when the answer is whole but its end is missing (b"": cannot)."""
        ...


class Writer(Protocol):
    def event(self, event: bytes) -> tuple[bytes, bool]:
        """One continuation event as the client must see it, and whether it ends the answer."""
        ...


@dataclass(slots=True)
class SoFar:
    """What the client has received of the answer."""

    id: Any = None
    created: Any = None
    model: Any = None
    text: list[str] = field(default_factory=list)
    chunks: int = 0  # events that carried content
    plain: bool = True  # no tool call, function call, refusal, reasoning, second choice
    finished: bool = False  # a finish_reason went out
    done: bool = False  # [DONE] went out

    def look(self, event: bytes) -> Verdict:
        """Note one primary event; its verdict says whether it may go to the client."""
        name, data = parse_event(event)
        if data is None:
            return "ok"  # a comment or an id: line
        if data == b"[DONE]":
            self.done = True
            return "done"
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            return "malformed"
        if not isinstance(obj, dict):
            return "malformed"
        if name == b"error" or obj.get("error") is not None:
            return "error"
        if self.id is None:
            self.id, self.created, self.model = obj.get("id"), obj.get("created"), obj.get("model")
        for choice in obj.get("choices") or ():
            self._choice(choice)
        return "ok"

    def _choice(self, choice: Any) -> None:
        if not isinstance(choice, dict) or choice.get("index", 0) != 0:
            self.plain = False
            return
        delta = choice.get("delta")
        if isinstance(delta, dict):
            if any(delta.get(k) for k in ("tool_calls", "function_call", "refusal", "reasoning_content",
                                           "reasoning", "audio")):
                self.plain = False
            content = delta.get("content")
            if isinstance(content, str) and content:
                self.text.append(content)
                self.chunks += 1
        if choice.get("finish_reason"):
            self.finished = True

    def closing(self) -> bytes:
        return DONE


def continuation_body(body: dict[str, Any], text: str, chunks: int, mode: Mode) -> dict[str, Any]:
    """The request that asks for the rest of ``text``: the same conversation, the answer so far as a
    final assistant message (vLLM: ``continue_final_message``), the output limit less what was sent."""
    messages = [*body.get("messages", ()), {"role": "assistant", "content": text}]
    out = {**body, "messages": messages}
    for key in ("max_completion_tokens", "max_tokens"):
        limit = out.get(key)
        if isinstance(limit, int) and not isinstance(limit, bool):
            out[key] = max(1, limit - chunks)
    if mode == "continue_final_message":
        out["continue_final_message"] = True
        out["add_generation_prompt"] = False
    return out


class Spliced:
    """The client's body: the primary stream, then (after a break) the continuation's."""

    __slots__ = ("_gen", "_inner", "_report", "_rest", "_resume", "_stop", "_writer", "so_far")

    def __init__(self, inner: AsyncIterator[bytes], resume: Resume, report: Report,
                 reader: Reader | None = None, writer: Callable[[Any], Writer] | None = None) -> None:
        self._inner = inner
        self._resume = resume
        self._report = report
        self._rest: AsyncIterator[bytes] | None = None  # the continuation's body, once it started
        self.so_far: Reader = reader if reader is not None else SoFar()
        self._writer = writer if writer is not None else _Rewrite
        self._stop = False
        self._gen = self._run()

    def __aiter__(self) -> Spliced:
        return self

    def __anext__(self) -> Awaitable[bytes]:
        return self._gen.__anext__()

    async def aclose(self) -> None:
        await self._gen.aclose()
        await close_body(self._inner)
        if self._rest is not None:
            await close_body(self._rest)

    async def _run(self) -> AsyncGenerator[bytes, None]:
        split = EventSplitter()
        while not self._stop:
            try:
                chunk = await self._inner.__anext__()
            except StopAsyncIteration:
                async for out in self._on_end():
                    yield out
                return
            except UpstreamFailure as failure:
                async for out in self._on_break(b"", failure, failure.kind):
                    yield out
                return
            async for out in self._on_chunk(split, chunk):
                yield out

    async def _on_end(self) -> AsyncGenerator[bytes, None]:
        if self.so_far.done:
            return
        closing = self.so_far.closing() if self.so_far.finished else b""
        if closing:  # the whole answer came, only its end marker is missing
            yield closing
            return
        async for out in self._on_break(b"", None, "ended_without_done"):
            yield out

    async def _on_chunk(self, split: EventSplitter, chunk: bytes) -> AsyncGenerator[bytes, None]:
        out = b""
        for event in split.events(chunk):
            verdict = self.so_far.look(event)
            if verdict in ("ok", "done"):
                out += event + b"\n\n"
                continue
            if out:
                yield out
                out = b""
            async for rescued in self._on_break(event + b"\n\n", None, f"{verdict}_event"):
                yield rescued
            if verdict == "error" or self._rest is not None:
                self._stop = True
                return
        if out:
            yield out

    async def _on_break(self, held: bytes, failure: UpstreamFailure | None,
                        why: str) -> AsyncGenerator[bytes, None]:
        """Continue from a fallback, or end (or go on) exactly as the stream would have without us."""
        so_far = self.so_far
        resumed = None
        if not so_far.plain or not so_far.text or so_far.finished:
            self._report("not_plain" if not so_far.plain else "nothing_to_continue", "")
        else:
            resumed = await self._resume("".join(so_far.text), so_far.chunks)
            if resumed is None:
                self._report("no_target", "")
        if resumed is None:
            if failure is not None:
                raise failure
            if held:
                yield held  # an error event ends the stream; a malformed one is relayed, the stream goes on
            return
        await close_body(self._inner)
        resp, upstream = resumed
        self._rest = resp.body
        async for out in self._splice(resp.body, upstream, failure, why):
            yield out

    async def _splice(self, body: AsyncIterator[bytes], upstream: str, failure: UpstreamFailure | None,
                      why: str) -> AsyncGenerator[bytes, None]:
        split = EventSplitter()
        rewrite = self._writer(self.so_far)
        try:
            async for chunk in body:
                out = b""
                for event in split.events(chunk):
                    piece, ended = rewrite.event(event)
                    if ended:
                        self._report("continued", upstream)
                        mark = b": x-gateway-continued upstream=%s after=%s\n\n" % (
                            upstream.encode(), why.encode())
                        yield out + mark + piece
                        return
                    out += piece
                if out:
                    yield out
        except UpstreamFailure:
            pass
        self._report("failed", upstream)
        original = failure.message if failure is not None else why.replace("_", " ")
        raise UpstreamFailure(failure.kind if failure is not None else "reset_mid_stream",
                              f"{original}; its continuation on {upstream} broke too", committed=True)


class _Rewrite:
    """The continuation's events as the primary's: same id, created, model; no role chunk; usage summed."""

    __slots__ = ("so_far",)

    def __init__(self, so_far: Any) -> None:
        self.so_far = so_far

    def event(self, event: bytes) -> tuple[bytes, bool]:
        _, data = parse_event(event)
        if data is None:
            return b"", False
        if data == b"[DONE]":
            return DONE, True
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise UpstreamFailure("malformed_event", "the continuation sent a malformed event",
                                  committed=True) from None
        if not isinstance(obj, dict) or obj.get("error") is not None:
            raise UpstreamFailure("error_event", "the continuation sent an error event", committed=True)
        so_far = self.so_far
        obj.update(id=so_far.id, created=so_far.created, model=so_far.model)
        choices = [c for c in obj.get("choices") or () if isinstance(c, dict) and not _role_only(c)]
        if obj.get("choices") and not choices:
            return b"", False
        obj["choices"] = choices
        usage = obj.get("usage")
        if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
            usage["completion_tokens"] += so_far.chunks  # the part the primary produced
            if isinstance(usage.get("total_tokens"), int):
                usage["total_tokens"] += so_far.chunks
        return b"data: " + orjson.dumps(obj) + b"\n\n", False


def _role_only(choice: dict[str, Any]) -> bool:
    delta = choice.get("delta")
    return (isinstance(delta, dict) and "role" in delta and not delta.get("content")
            and not choice.get("finish_reason"))


def responses_body(body: dict[str, Any], text: str, chunks: int) -> dict[str, Any]:
    """The Responses request that asks for the rest of ``text`` (an assistant message appended)."""
    given = body.get("input")
    items = [{"role": "user", "content": given}] if isinstance(given, str) else list(given or ())
    out = {**body, "input": [*items, {"role": "assistant", "content": text}]}
    limit = out.get("max_output_tokens")
    if isinstance(limit, int) and not isinstance(limit, bool):
        out["max_output_tokens"] = max(1, limit - chunks)
    return out
