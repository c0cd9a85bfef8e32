"""A request body's JSON, parsed once and checked (issue 15: cheap beside the parse on large bodies).

One JSON object, or a 400: nesting beyond ``MAX_DEPTH`` is refused before anything walks it
recursively, and a repeated steering key (``model``, ``stream``: the gateway would read the last one, a
provider may read the first) is refused. Passes over a large body's bytes run in slices, so the GIL can
go to the event loop between them.
"""
from __future__ import annotations

import json
import re
from itertools import compress
from typing import Any

import orjson

from gateway.errors import LocalReply, bad_request

MAX_DEPTH = 64


def parse_json(raw: bytes) -> dict[str, Any]:
    """One JSON object, refused (400) when it is not one, nests too deep or repeats a steering key.

    Besides orjson's parse, the checks stay cheap on large honest bodies (issue 15: they ran at ~3x the
    parse's cost on a 500 KB prompt): depth walks the parsed containers within a budget before it falls
    back to counting brackets, and the steering scan counts only the keys the parsed body has.
    """
    if not raw.strip():
        raise bad_request("Request body is empty: send a JSON object.", code="invalid_json")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if "depth limit" in str(exc) or "recursion" in str(exc).lower():
            raise too_deep() from exc
        raise bad_request(f"We could not parse the JSON body of your request: {_short(str(exc))}",
                          code="invalid_json") from exc
    if not isinstance(body, dict):
        raise bad_request("The JSON body must be an object.", code="invalid_json")
    if _nests_too_deep(raw, body):
        raise too_deep()
    # The original bytes are forwarded: a duplicated steering key could be read one way here (last wins)
    # and another way by the provider (first wins), so route, limits and cache would see another request.
    if _may_steer_twice(raw, body) and _has_duplicate_keys(raw):
        raise bad_request("The JSON body has a duplicate key.", code="duplicate_key")
    return body


# Elements the depth walk may look at before it lets a bracket count decide instead: an agent's
# conversation of hundreds of messages fits; a long token array or an adversarial body does not.
WALK_BUDGET = 16_384
# Up to this size the brackets are counted first (two passes at C speed, ~0.1 us here): nesting is at most
# their number, so most small bodies need no walk at all.
SMALL_BODY_BYTES = 16 * 1024


def _nests_too_deep(raw: bytes, body: dict[str, Any]) -> bool:
    """Deeper than ``MAX_DEPTH``? The budgeted walk decides most bodies without a pass over the bytes;
    past its budget, brackets (an upper bound on depth) decide whether the full walk is needed."""
    if len(raw) <= SMALL_BODY_BYTES and raw.count(b"{") + raw.count(b"[") <= MAX_DEPTH:
        return False  # fewer brackets than the limit, strings included: no walk needed
    verdict = walk_depth(body, MAX_DEPTH, WALK_BUDGET)
    if verdict is not None:
        return verdict
    return raw.count(b"{") + raw.count(b"[") > MAX_DEPTH and walk_depth(body, MAX_DEPTH) is True


_IS_CONTAINER = frozenset({dict, list}).__contains__


def walk_depth(value: dict[str, Any], limit: int, budget: float = float("inf")) -> bool | None:
    """True/False when containers nest deeper than ``limit``; None once ``budget`` elements were seen.

    Level by level; a container's children are sifted at C speed (``compress`` over their types), so
    only containers cost Python work (~0.2 us each), never the strings and numbers inside them."""
    level: list[Any] = [value]
    depth = 1
    while level:
        if depth > limit:
            return True
        below: list[Any] = []
        for node in level:
            children = node.values() if type(node) is dict else node
            budget -= len(children)
            if budget < 0:
                return None
            below.extend(compress(children, map(_IS_CONTAINER, map(type, children))))
        level = below
        depth += 1
    return False


_STEERING_KEYS = frozenset({"model", "stream"})
# An object key of 5 to 36 bytes (the longest spelling of "stream" is six \u escapes): bounded, so the
# scan stays linear on any body.
_SHORT_KEY = re.compile(rb'"([^"]{5,36})"\s*:')
# A \u escape of an ASCII letter (0x40-0x7f): any escaped spelling of "model" or "stream" has one.
# Text escapes (non-ASCII, control characters) do not match, so honest bodies skip the key scan.
_ESCAPED_LETTER = re.compile(rb"\\u00[4-7][0-9a-fA-F]")


def _may_steer_twice(raw: bytes, body: dict[str, Any]) -> bool:
    """Cheap test for a possibly duplicated steering key, literal or escaped (``"mod\u0065l"``).

    A key the parsed body lacks is in no top-level spelling of the bytes: only the keys it has are
    counted (a body without ``stream`` costs one count)."""
    if _more_than_one(raw, b'"model"') or ("stream" in body and _more_than_one(raw, b'"stream"')):
        return True
    if raw.find(b"\\") < 0 or not _has_escaped_letter(raw):
        return False
    for match in _SHORT_KEY.finditer(raw):
        key = match.group(1)
        if b"\\u" not in key:
            continue
        try:
            if orjson.loads(b'"' + key + b'"') in _STEERING_KEYS:
                return True
        except orjson.JSONDecodeError:
            continue
    return False


# Passes over a large body's bytes run in slices: the GIL can go to the event loop between two slices
# (at the switch interval), not only after a whole multi-megabyte C call (issue 15).
SLICE_BYTES = 1 << 20


def _more_than_one(raw: bytes, needle: bytes) -> bool:
    """``raw.count(needle) > 1``, counted slice by slice (``needle`` must not overlap itself)."""
    n = len(raw)
    if n <= SLICE_BYTES:
        return raw.count(needle) > 1
    seen, reach = 0, len(needle) - 1
    for at in range(0, n, SLICE_BYTES):
        seen += raw.count(needle, at, min(at + SLICE_BYTES + reach, n))
        if seen > 1:
            return True
    return False


def _has_escaped_letter(raw: bytes) -> bool:
    """``_ESCAPED_LETTER.search(raw)``, slice by slice (a match starting in a slice may end past it)."""
    n = len(raw)
    return any(_ESCAPED_LETTER.search(raw, at, min(at + SLICE_BYTES + 5, n)) is not None
               for at in range(0, n, SLICE_BYTES))


def _has_duplicate_keys(raw: bytes) -> bool:
    """Exact and slow (the stdlib parser with a hook): is a steering key repeated in the top-level object?

    Only run when a cheap count says it may be. Objects are built inside out, so the hook's last call is
    the top-level object; nested objects are not built at all (their repeats are not ours to judge)."""
    last: list[list[tuple[str, Any]]] = []

    def pairs_hook(pairs: list[tuple[str, Any]]) -> None:
        last[:] = [pairs]

    json.loads(raw, object_pairs_hook=pairs_hook)
    steering = [key for key, _ in last[0] if key in _STEERING_KEYS] if last else []
    return len(steering) != len(set(steering))


def too_deep() -> LocalReply:
    return bad_request(f"JSON nested deeper than {MAX_DEPTH} levels.", code="json_too_deep")


def _short(text: str) -> str:
    return text if len(text) <= 200 else text[:200] + "..."
