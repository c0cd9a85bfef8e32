"""The official ``openai`` SDK as the judge of what a client sees.

``final_answer`` sends one request with the SDK and returns the answer the SDK hands its caller,
as a plain dict: a non-stream body as parsed, a stream as the SDK accumulates it
(``ChatCompletionStreamState`` for chat, the Responses stream helper's final response; legacy
completions concatenated per choice as the SDK's chunks give them). Tests compare these dicts
between the gateway and the provider directly, so a difference means a client would see one;
``differences`` compares a provider's answer with a replay in the other mode.
"""
from __future__ import annotations

from typing import Any

from openai import AsyncOpenAI
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types import Completion, CompletionChoice
from openai.types.chat import ChatCompletion
from openai.types.chat.chat_completion import Choice as ChatChoice


async def final_answer(client: AsyncOpenAI, path: str, body: dict[str, Any],
                       headers: dict[str, str] | None = None) -> dict[str, Any]:
    """The answer to ``body`` on ``path`` as the SDK gives it (see the module doc)."""
    args = {k: v for k, v in body.items() if k != "stream"}
    extra = {"extra_headers": headers or {}}
    stream = body.get("stream") is True
    if path == "/v1/responses":
        if stream:
            async with client.responses.stream(**args, **extra) as rs:
                return plain((await rs.get_final_response()).model_dump(mode="json"))
        return plain((await client.responses.create(**args, **extra)).model_dump(mode="json"))
    if path == "/v1/completions":
        if not stream:
            return plain((await client.completions.create(**args, **extra)).model_dump(mode="json"))
        chunks = await client.completions.create(**args, stream=True, **extra)
        return _completion_of([c.model_dump(mode="json") async for c in chunks])
    if not stream:
        return plain((await client.chat.completions.create(**args, **extra)).model_dump(mode="json"))
    state: ChatCompletionStreamState[Any] = ChatCompletionStreamState()
    async for chunk in await client.chat.completions.create(**args, stream=True, **extra):
        state.handle_chunk(chunk)
    return plain(state.current_completion_snapshot.model_dump(mode="json"))


def plain(obj: Any) -> Any:
    """Without the SDK's own parse-helper fields (``parsed``, ``parsed_arguments``), which are not data."""
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items() if k not in ("parsed", "parsed_arguments")}
    if isinstance(obj, list):
        return [plain(v) for v in obj]
    return obj


def _completion_of(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    head = {k: v for k, v in chunks[0].items() if k not in ("choices", "usage")}
    choices: dict[int, dict[str, Any]] = {}
    usage = None
    for chunk in chunks:
        usage = chunk.get("usage") or usage
        for ch in chunk.get("choices") or ():
            acc = choices.setdefault(ch["index"], {**ch, "text": ""})
            acc["text"] += ch.get("text") or ""
            acc["finish_reason"] = ch.get("finish_reason") or acc["finish_reason"]
    return {**head, "choices": [choices[i] for i in sorted(choices)], "usage": usage}


# Fields of the SDK's own answer types; any other field is a provider extra.
TOP_FIELDS = frozenset(ChatCompletion.model_fields) | frozenset(Completion.model_fields)
CHOICE_FIELDS = frozenset(ChatChoice.model_fields) | frozenset(CompletionChoice.model_fields)


def differences(direct: dict[str, Any], replay: dict[str, Any]) -> list[str]:
    """What a client would see differ between the SDK's view of the provider's answer and of a replay.

    A stream's SDK accumulation has three artifacts that a non-stream answer does not, so they are not
    differences: a ``role`` repeated in every delta is concatenated (``assistantassistant``), streamed
    tool calls keep their delta ``index``, and provider extras are taken from the first chunk only (a
    replay carries them merged over all chunks, as the provider's non-stream answer does: every extra the
    SDK saw must still be there with its value; more may be).
    """
    if "choices" not in direct:
        return [] if direct == replay else [f"answer: {direct!r} != {replay!r}"]
    out = _fields(direct, replay, TOP_FIELDS, "", skip=frozenset({"choices"}))
    dc, rc = direct.get("choices") or [], replay.get("choices") or []
    if len(dc) != len(rc):
        return [*out, f"choices: {len(dc)} != {len(rc)}"]
    for i, (d, r) in enumerate(zip(dc, rc)):
        if isinstance(d.get("message"), dict):
            role = (r.get("message") or {}).get("role")
            d = {**d, "message": _without_stream_artifacts(d["message"], role)}
        out += _fields(d, r, CHOICE_FIELDS, f"choices[{i}].")
    return out


def _fields(d: dict[str, Any], r: dict[str, Any], standard: frozenset[str], prefix: str,
            skip: frozenset[str] = frozenset()) -> list[str]:
    out = []
    for key in sorted((d.keys() | r.keys()) - skip):
        dv, rv = d.get(key), r.get(key)
        if key in standard:
            same = dv == rv
        else:  # a provider extra
            same = dv is None or dv == rv or (
                isinstance(dv, dict) and isinstance(rv, dict) and all(rv.get(k) == v for k, v in dv.items()))
        if not same:
            out.append(f"{prefix}{key}: {dv!r} != {rv!r}")
    return out


def _without_stream_artifacts(msg: dict[str, Any], role: Any) -> dict[str, Any]:
    msg = dict(msg)
    got = msg.get("role")
    if isinstance(role, str) and role and isinstance(got, str) and got == role * (len(got) // len(role)):
        msg["role"] = role
    if msg.get("tool_calls"):
        msg["tool_calls"] = [{k: v for k, v in c.items() if k != "index"} for c in msg["tool_calls"]]
    return msg
