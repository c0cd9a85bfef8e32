"""The message-rewriting steps of compression (1: normalise, 2: truncate, 3: dedupe).

Each step is a pure function from a message list to a new message list. A
message a step does not change is passed on as the same object (never copied,
never mutated), so callers can share the client's parsed body safely and the
meter can reuse its counts. Each step rewrites a message as a function of that
message (and, for dedupe, of earlier ones only): a conversation that grows by
appending turns gets byte-identical rewrites of its old messages, which keeps
the provider's prompt cache valid.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from gateway.tokens.request import CountFn
from policies.compression import markers
from policies.compression.meter import Meter
from policies.compression.turns import ANSWER_ROLES, SYSTEM_ROLES, Message, role_of

_INNER_SPACE = re.compile(r"(?<=\S)[ \t\f\v]{2,}")
_FENCE = "```"
DEDUPE_MIN_CHARS = 64  # shorter outputs ("ok", "[]") cost less than a reference to them


# --- 1. normalise system and developer prompts -------------------------------------------------

def normalise(messages: Sequence[Message]) -> list[Message]:
    """Collapse whitespace runs in system/developer prompts and drop repeated paragraphs.

    A paragraph (a block between blank lines, or a whole fenced code block) that
    already appeared in an earlier system/developer prompt is dropped; a prompt
    left with nothing is dropped whole. Leading indentation and fenced code are
    kept as they are, since they can carry meaning (nested lists, Python).
    """
    seen: set[str] = set()
    out: list[Message] = []
    for message in messages:
        if role_of(message) not in SYSTEM_ROLES:
            out.append(message)
            continue
        content = message.get("content")
        if isinstance(content, str):
            text = _normalise_text(content, seen)
            if text or not content.strip():
                out.append(message if text == content else {**message, "content": text})
        elif isinstance(content, list):
            parts = _normalise_parts(content, seen)
            if parts:
                out.append(message if parts == content else {**message, "content": parts})
        else:
            out.append(message)
    return out


def _normalise_parts(parts: list[Any], seen: set[str]) -> list[Any]:
    out: list[Any] = []
    for part in parts:
        if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
            text = _normalise_text(part["text"], seen)
            if text:
                out.append(part if text == part["text"] else {**part, "text": text})
        else:
            out.append(part)
    return out


def _normalise_text(text: str, seen: set[str]) -> str:
    kept: list[str] = []
    for paragraph in _paragraphs(text):
        if paragraph not in seen:
            seen.add(paragraph)
            kept.append(paragraph)
    return "\n\n".join(kept)


def _paragraphs(text: str) -> list[str]:
    """Blank-line separated paragraphs with whitespace runs collapsed; fenced blocks verbatim."""
    paragraphs: list[str] = []
    lines: list[str] = []
    fenced = False
    for raw in text.split("\n"):
        if raw.lstrip().startswith(_FENCE):
            if not fenced and lines:
                paragraphs.append("\n".join(lines))
                lines = []
            lines.append(raw.rstrip())
            fenced = not fenced
            if not fenced:
                paragraphs.append("\n".join(lines))
                lines = []
            continue
        if fenced:
            lines.append(raw.rstrip())
            continue
        line = _INNER_SPACE.sub(" ", raw.rstrip())
        if line.strip():
            lines.append(line)
        elif lines:
            paragraphs.append("\n".join(lines))
            lines = []
    if lines:
        paragraphs.append("\n".join(lines))
    return paragraphs


# --- 2. truncate oversized tool outputs --------------------------------------------------------

def oversized(
    messages: Sequence[Message], max_tokens: int, count: CountFn, stop: int | None = None
) -> list[int]:
    """Indices (below ``stop``) of plain-text tool outputs over ``max_tokens`` tokens."""
    found = []
    for i, message in enumerate(messages[:stop]):
        if (
            role_of(message) in ANSWER_ROLES
            and (text := tool_text(message)) is not None
            and count(text) > max_tokens
        ):
            found.append(i)
    return found


def truncate(
    messages: Sequence[Message], indices: Iterable[int], max_tokens: int, meter: Meter
) -> list[Message]:
    """Keep the head and the tail of the tool outputs at ``indices`` (see ``oversized``).

    Between them goes a marker with the number of tokens cut. Outputs made of
    content parts (all text) become one string. The meter learns the exact
    count of each new output, so nothing is tokenized twice.
    """
    out = list(messages)
    for i in indices:
        text = tool_text(out[i])
        if text is None:
            continue
        content, tokens = head_tail(text, meter.text(text), max_tokens, meter.text)
        meter.learn(content, tokens)
        out[i] = {**out[i], "content": content}
    return out


def tool_text(message: Message) -> str | None:
    """The text of a tool output, or None when it is not plain text."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list) and content and all(
        isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content
    ):
        return "".join(p["text"] for p in content)
    return None


def head_tail(text: str, tokens: int, max_tokens: int, count: CountFn) -> tuple[str, int]:
    """``text`` cut to at most ``max_tokens`` tokens, and the count of the result.

    Half head, half tail, a marker between. Cuts are placed by the text's
    average characters per token (moved to a nearby line break, so JSON and code
    stay line-complete) and the result is counted once; it is shrunk and counted
    again only if that guess overshot. The marker's number is then corrected to
    the exact cut: numbers of the same digit count tokenize to the same count
    (tiktoken splits digits in groups of three, all single tokens), so the
    corrected text has the count already measured.
    """
    room = max_tokens - count(markers.truncated(tokens))
    chars_per_token = len(text) / tokens
    share = room * 0.48
    for _ in range(6):
        chars = int(share * chars_per_token)
        head = _head(text, chars)
        tail = _tail(text, chars, len(head))
        guess = tokens - round((len(head) + len(tail)) / chars_per_token)
        result = count(head + markers.truncated(guess) + tail)
        if result <= max_tokens:
            break
        share *= 0.9 * room / max(1, result - (max_tokens - room))
    else:  # pathological text (one huge token run): keep nothing but the marker
        return markers.truncated(tokens).strip(), count(markers.truncated(tokens).strip())
    cut = tokens - (result - count(markers.truncated(guess)))
    if len(str(cut)) != len(str(guess)):
        final = head + markers.truncated(cut) + tail
        return final, count(final)
    return head + markers.truncated(cut) + tail, result


def _head(text: str, chars: int) -> str:
    cut = text.rfind("\n", 0, chars)
    return text[: cut + 1] if cut >= chars * 0.8 else text[:chars]


def _tail(text: str, chars: int, head_len: int) -> str:
    start = max(head_len, len(text) - chars)
    cut = text.find("\n", start, start + max(1, chars // 5))
    return text[cut + 1:] if cut >= 0 else text[start:]


# --- 3. replace repeated tool outputs by a reference -------------------------------------------

def dedupe(messages: Sequence[Message], count: CountFn) -> list[Message]:
    """Replace a tool output identical to an earlier one by a reference to that call.

    Only when the reference is shorter; references always point backwards to a
    message present in ``messages``, so this must run after any pruning too.
    """
    first: dict[str, str] = {}
    out: list[Message] = []
    for message in messages:
        content = dedupe_key(message)
        if content is None:
            out.append(message)
            continue
        earlier = first.get(content)
        if earlier is None:
            first[content] = message["tool_call_id"]
            out.append(message)
            continue
        reference = markers.duplicate_of(earlier)
        out.append({**message, "content": reference} if count(reference) < count(content) else message)
    return out


def dedupe_key(message: Message) -> str | None:
    """The content by which a tool output is compared, or None when it is not a candidate."""
    content = message.get("content")
    if (type(content) is str and len(content) >= DEDUPE_MIN_CHARS and type(message.get("tool_call_id")) is str
            and role_of(message) == "tool"):
        return content
    return None
