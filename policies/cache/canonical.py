"""Turn a finished upstream answer, streamed or not, into the one canonical JSON form.

A streamed answer is collected as raw bytes while it passes through (never
parsed chunk by chunk on the hot path) and assembled here once, after the
stream ended. Assembly follows the providers' accumulation rules: per choice,
string deltas (``content``, ``reasoning_content``, ``refusal`` ...) concatenate,
tool calls merge by ``index`` with ``arguments`` concatenated, the last
``finish_reason`` wins, logprob lists extend. ``None`` means "not a complete,
clean answer": no ``[DONE]`` / ``response.completed``, an error event, or a body
that is not the expected object; such answers are never stored.
"""
from __future__ import annotations

from typing import Any

import orjson

from gateway.sse import CR, events_of
from policies.cache.chunk_runs import Unfit, parse_chunks

_HEAD_FIELDS = ("id", "created", "model", "system_fingerprint", "service_tier")
# What the assembly itself builds; any other field of a chunk or of its choices is a provider extra
# (Azure ``prompt_filter_results``/``content_filter_results``, Groq ``x_groq``, vLLM ``stop_reason``...).
# ``obfuscation`` is OpenAI's per-chunk random padding (a side-channel mitigation on the wire, on by default):
# not part of the answer, which a non-stream response never carries; left out like the fields built here.
_BUILT_TOP = frozenset({*_HEAD_FIELDS, "object", "choices", "usage", "obfuscation"})
_BUILT_CHOICE = frozenset({"index", "delta", "text", "finish_reason", "logprobs"})
# Finish reasons of a complete answer: only answers whose every choice ended with one of these are stored
# (``length`` only with ``cache_truncated``). ``content_filter`` is left out on purpose: a filter verdict
# is the provider's policy of the day, and a false positive must not be replayed for a whole TTL.
FINISHED = frozenset({"stop", "length", "tool_calls", "function_call"})
_SEP = b"\n\ndata: "  # between two one-line events
_SPLIT_BYTES = 256 * 1024  # a large answer is split into its events this much at a time (``_split_lines``)


def complete(reasons: list[str]) -> bool:
    """Every choice finished normally (``None``, ``"error"``, a missing reason or no choice: incomplete)."""
    return bool(reasons) and FINISHED.issuperset(reasons)  # in C: no generator per stored answer
_SET_ONCE = ("id", "type")


def answer_from_json(operation: str, data: bytes) -> dict[str, Any] | None:
    """A non-stream body, if it is a complete answer of ``operation``."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(obj, dict) or "error" in obj and obj["error"] is not None and operation != "responses":
        return None
    if operation == "responses":
        done = obj.get("object") == "response" and obj.get("status") in ("completed", "incomplete")
        return obj if done else None
    choices = obj.get("choices")
    if not isinstance(choices, list) or not choices:
        return None
    for choice in choices:  # a loop, not all(generator): one choice is the common case
        if not isinstance(choice, dict):
            return None
    return obj


def finish_reasons(operation: str, obj: dict[str, Any]) -> list[str]:
    """Finish reasons of a canonical answer; a truncated Response counts as ``length``."""
    if operation == "responses":
        return ["length"] if obj.get("status") == "incomplete" else ["stop"]
    return [str(c.get("finish_reason")) for c in obj.get("choices") or () if isinstance(c, dict)]


def answer_from_sse(operation: str, data: bytes) -> dict[str, Any] | None:
    """Assemble a streamed answer; ``None`` unless it ended cleanly."""
    found = _payloads(data)
    if found is None:
        return None
    payloads, done = found
    try:
        events = parse_chunks(operation, payloads)  # runs of chunks that differ only in text: as one
    except Unfit:
        return None
    if operation == "responses":
        return _response_from_events(events)
    if not done or not events:
        return None
    return _chat_from_chunks(events) if operation == "chat" else _completion_from_chunks(events)


def _payloads(data: bytes) -> tuple[list[bytes], bool] | None:
    """The non-empty payloads before and after ``[DONE]``, and whether it came; None at an error event."""
    lines = _data_lines(data)
    return _kept(lines) if lines is not None else grammar_payloads(data)


def grammar_payloads(data: bytes) -> tuple[list[bytes], bool] | None:
    """``_payloads`` read by the SSE grammar, event by event (``events_of``): any body."""
    payloads: list[bytes] = []
    done = False
    for name, payload in events_of(data):
        if name == b"error":
            return None
        if payload == b"[DONE]":
            done = True
        elif payload:
            payloads.append(payload)
    return payloads, done


def _data_lines(data: bytes) -> list[bytes] | None:
    """Every event's ``data:`` value, unstripped, when each event is one ``data: <payload>`` line (as
    providers send them), found at C speed; None for anything else (``events_of`` reads it then)."""
    if not data.startswith(b"data: ") or not data.endswith(b"\n\n") or CR in data:
        return None
    lines = _split_lines(data)
    # Two newlines per separator and two at the end are all there are: no other line, no blank event.
    return lines if data.count(b"\n") == 2 * len(lines) else None


_REASON = b'"finish_reason":"'
_STREAM_END = b"}\n\ndata: [DONE]\n\n"


def _split_lines(data: bytes) -> list[bytes]:
    """``data[6:-2].split(_SEP)``, one ``_SPLIT_BYTES`` step at a time: the same list (the separator cannot
    overlap itself, so cutting at one of its occurrences and splitting each side finds the same ones).
    A 4.4 MB answer split in one call held the GIL for 9-20 ms in the cache fill's thread, a stall of the
    event loop beside it (issue 15); in steps the thread can be switched out between them."""
    end = len(data) - 2
    if end <= _SPLIT_BYTES:
        return data[6:end].split(_SEP)
    lines: list[bytes] = []
    start = 6
    while True:
        cut = data.find(_SEP, start + _SPLIT_BYTES, end)
        if cut < 0:
            lines.extend(data[start:end].split(_SEP))
            return lines
        lines.extend(data[start:cut].split(_SEP))
        start = cut + len(_SEP)


def stream_reasons(data: bytes) -> list[str] | None:
    """The finish reason of a one-choice chat or completions stream in the providers' usual form, read
    from its bytes without parsing it (issue 21: the assembly at every streamed miss was 15-20% of a
    20-chunk stream's instructions in the default config). None: not that form (parse it to know).

    The form: ``data:`` events with ``\n`` line ends, a JSON object first and last, then ``[DONE]``; no
    ``event:`` line and no ``"error"`` anywhere (an error object, an ``"error"`` finish reason); the last
    non-null ``finish_reason`` a compact plain string with no other finish reason after it. A key is never
    inside a JSON string (quotes there are escaped), so that is the one the assembly keeps (the last one
    wins). Three scans and a search from the end: ~6 µs for a 20-chunk stream. What the bytes do not prove
    (one choice, each line one valid chunk) is checked when the entry is assembled on its first hit
    (``CachedAnswer.ready``): an answer that does not assemble to this reason is then dropped as a miss.
    """
    if not data.startswith(b"data: {") or not data.endswith(_STREAM_END):
        return None
    if CR in data or data.find(b'"error"') >= 0 or data.find(b"\nevent:") >= 0:  # not ``in``: gateway.sse.CR
        return None
    at = data.rfind(_REASON) + len(_REASON)
    if at < len(_REASON):
        return None
    close = data.find(b'"', at)
    reason = data[at:close]
    if not reason.replace(b"_", b"").isalnum():  # ASCII letters and digits: no escape, no empty string
        return None
    later = data.find(b'"finish_reason"', close)  # a later one: null, else another spelling (``": "x"``)
    while later >= 0:
        later += 15
        if not data.startswith((b":null", b": null"), later):
            return None
        later = data.find(b'"finish_reason"', later)
    return [reason.decode()]


def _kept(lines: list[bytes]) -> tuple[list[bytes], bool]:
    """The payloads as the grammar reads them (stripped; empty ones and ``[DONE]`` taken out). A JSON
    object's line starts with ``{`` and ends with ``}``: stripping leaves it as it is."""
    payloads: list[bytes] = []
    done = False
    for line in lines:
        if line[:1] != b"{" or line[-1:] != b"}":
            line = line.strip()
            if line == b"[DONE]":
                done = True
                continue
            if not line:
                continue
        payloads.append(line)
    return payloads, done


def _response_from_events(events: list[dict[str, Any]]) -> dict[str, Any] | None:
    final: dict[str, Any] | None = None
    for event in events:
        kind = event.get("type")
        if kind in ("error", "response.failed"):
            return None
        if kind in ("response.completed", "response.incomplete") and isinstance(event.get("response"), dict):
            final = event["response"]
    return final


def _head(events: list[dict[str, Any]], obj_type: str) -> dict[str, Any]:
    head: dict[str, Any] = {}
    for event in events:
        for name in _HEAD_FIELDS:
            if name not in head and event.get(name) is not None:
                head[name] = event[name]
    out: dict[str, Any] = {"id": head["id"]} if "id" in head else {}  # a provider without ids: none
    out["object"] = obj_type
    out.update((k, head[k]) for k in _HEAD_FIELDS[1:] if k in head)
    return out


def merge_extras(acc: dict[str, Any], obj: dict[str, Any], built: frozenset[str]) -> None:
    """Keep ``obj``'s provider extras in ``acc`` as a non-stream answer carries them: objects merged
    key by key (Groq's ``x_groq`` id, then its usage), other values the last non-null one, nulls kept."""
    extra = obj.keys() - built  # at C speed: most chunks have none
    if not extra:
        return
    for key in [key for key in obj if key in extra]:  # in the chunk's order
        value, old = obj[key], acc.get(key)
        if isinstance(value, dict) and isinstance(old, dict):
            acc[key] = {**old, **value}
        elif value is not None or key not in acc:
            acc[key] = value


def _last_usage(events: list[dict[str, Any]]) -> Any:
    usage = None
    for event in events:
        if isinstance(event.get("usage"), dict):
            usage = event["usage"]
    return usage


def _chat_from_chunks(events: list[dict[str, Any]]) -> dict[str, Any] | None:
    choices: dict[int, dict[str, Any]] = {}
    extras: dict[str, Any] = {}
    for event in events:
        merge_extras(extras, event, _BUILT_TOP)
        for ch in event.get("choices") or ():
            if not isinstance(ch, dict):
                return None
            index = int(ch.get("index") or 0)
            state = choices.get(index)
            if state is None:
                state = choices[index] = {"message": {}, "calls": {}, "finish_reason": None, "logprobs": None,
                                          "extras": {}}
            merge_extras(state["extras"], ch, _BUILT_CHOICE)
            delta = ch.get("delta")
            if isinstance(delta, dict):
                _merge_chat_delta(state, delta)
            if ch.get("finish_reason"):
                state["finish_reason"] = ch["finish_reason"]
            if isinstance(ch.get("logprobs"), dict):
                state["logprobs"] = _merge_logprobs(state["logprobs"], ch["logprobs"])
    if not choices or any(s["finish_reason"] is None for s in choices.values()):
        return None
    out = _head(events, "chat.completion")
    out["choices"] = [_chat_choice(i, choices[i]) for i in sorted(choices)]
    usage = _last_usage(events)
    if usage is not None:
        out["usage"] = usage
    out.update(extras)
    return out


class _Pieces(list[str]):
    """A streamed string's pieces, joined once at the end: adding each piece to the string so far
    copied it every time (a 15,000-token answer: ~700 MB of copies in the fill's thread)."""


def _joined(value: Any) -> Any:
    return "".join(value) if type(value) is _Pieces else value


def _append(holder: dict[str, Any], key: str, piece: str) -> None:
    """``holder[key] += piece`` in pieces (a missing or null value counts as "")."""
    held = holder.get(key)
    if type(held) is _Pieces:
        held.append(piece)
    else:
        holder[key] = _Pieces((held, piece) if isinstance(held, str) and held else (piece,))


def _merge_chat_delta(state: dict[str, Any], delta: dict[str, Any]) -> None:
    msg = state["message"]
    for key, value in delta.items():
        if key == "tool_calls" and isinstance(value, list):
            for call in value:
                if isinstance(call, dict):
                    _merge_call(state["calls"], call)
        elif isinstance(value, str):
            if key == "role":
                msg[key] = value
            else:
                _append(msg, key, value)  # a null opening delta first
        elif isinstance(value, list):
            msg[key] = [*msg.get(key, []), *value]
        elif value is None:
            msg.setdefault(key, None)
        else:
            msg[key] = value


def _merge_call(calls: dict[int, dict[str, Any]], delta: dict[str, Any]) -> None:
    index = int(delta.get("index") or 0)
    call = calls.setdefault(index,
                            {"id": None, "type": "function", "function": {"name": "", "arguments": ""}})
    for key in _SET_ONCE:
        if delta.get(key):
            call[key] = delta[key]
    fn = delta.get("function")
    if isinstance(fn, dict):
        if fn.get("name") and not call["function"]["name"]:
            call["function"]["name"] = fn["name"]
        if isinstance(fn.get("arguments"), str):
            _append(call["function"], "arguments", fn["arguments"])


def _merge_logprobs(acc: dict[str, Any] | None, part: dict[str, Any]) -> dict[str, Any]:
    """``part``'s lists appended to ``acc``'s (made here on the first part, so its lists are ours to extend:
    a new list per chunk copied every entry so far each time)."""
    acc = {} if acc is None else acc
    for key, value in part.items():
        if isinstance(value, list):
            held = acc.get(key)
            if type(held) is list:
                held.extend(value)
            else:
                acc[key] = list(value)
        elif key not in acc:
            acc[key] = value
    return acc


def _chat_choice(index: int, state: dict[str, Any]) -> dict[str, Any]:
    msg = {key: _joined(value) for key, value in state["message"].items()}
    for call in state["calls"].values():
        call["function"]["arguments"] = _joined(call["function"]["arguments"])
    content = msg.pop("content", None)
    if content == "" and (state["calls"] or msg.get("refusal") or msg.get("function_call")):
        content = None
    message: dict[str, Any] = {"role": msg.pop("role", "assistant"), "content": content}
    message.update(msg)
    if state["calls"]:
        message["tool_calls"] = [state["calls"][i] for i in sorted(state["calls"])]
    return {
        "index": index,
        "message": message,
        "logprobs": state["logprobs"],
        "finish_reason": state["finish_reason"],
        **state["extras"],
    }


def _completion_from_chunks(events: list[dict[str, Any]]) -> dict[str, Any] | None:
    choices: dict[int, dict[str, Any]] = {}
    extras: dict[str, Any] = {}
    for event in events:
        merge_extras(extras, event, _BUILT_TOP)
        for ch in event.get("choices") or ():
            if not isinstance(ch, dict):
                return None
            state = choices.setdefault(
                int(ch.get("index") or 0), {"text": "", "finish_reason": None, "logprobs": None, "extras": {}}
            )
            merge_extras(state["extras"], ch, _BUILT_CHOICE)
            if isinstance(ch.get("text"), str):
                _append(state, "text", ch["text"])
            if ch.get("finish_reason"):
                state["finish_reason"] = ch["finish_reason"]
            if isinstance(ch.get("logprobs"), dict):
                state["logprobs"] = _merge_logprobs(state["logprobs"], ch["logprobs"])
    if not choices or any(s["finish_reason"] is None for s in choices.values()):
        return None
    out = _head(events, "text_completion")
    out["choices"] = [
        {
            "text": _joined(choices[i]["text"]),
            "index": i,
            "logprobs": choices[i]["logprobs"],
            "finish_reason": choices[i]["finish_reason"],
            **choices[i]["extras"],
        }
        for i in sorted(choices)
    ]
    usage = _last_usage(events)
    if usage is not None:
        out["usage"] = usage
    out.update(extras)
    return out
