"""Usage policy (outermost): make every answer accountable, invisibly to the client.

Streams carry usage only when asked (``stream_options.include_usage``), so for
chat and completions streams whose client did not ask, this layer asks on its
behalf and then takes the answer back out of the stream: the final usage event
(``"choices":[]``) is dropped and the ``"usage":null`` field the provider adds
to every other chunk is removed, so the client receives exactly what it asked
for. The usage read here is stored on ``ex.record.usage``.

The injection splices bytes into the client's raw body when nothing else has
changed it, so an agent's 200 KB prompt is not re-serialised for one flag.

It also keeps references to the relayed chunks (``Capture``) so that a request
without usage can still be charged for what it produced (see
``policies.usage.accounting``).

Config: ``metrics.inject_stream_usage`` (default true); set it false for a
provider that rejects ``stream_options``. No decision is taken here (nothing is
refused), so there is nothing to shadow.
"""
from __future__ import annotations

import re
from typing import Any

import orjson

from gateway.appstate import AppState
from gateway.body import Observed
from gateway.chain import Next
from gateway.config_model import Config
from gateway.exchange import Exchange, UpstreamResponse
from gateway.produced import CAPTURE_KEY, Capture
from gateway.sse import EventSplitter, parse_event
from gateway.usage import usage_from_response_obj

INJECT_OPERATIONS = frozenset({"chat", "completions"})
CAPTURE_OPERATIONS = frozenset({"chat", "completions", "responses"})
_SPLICE = b'"stream_options":{"include_usage":true},'
# ``"usage": null`` with its comma, in any JSON spacing
# (a key is never inside a string: quotes there are escaped).
_NULL_USAGE = re.compile(rb',\s*"usage"\s*:\s*null(?=\s*[,}])|"usage"\s*:\s*null\s*,')
_COMPACT_NULL = b',"usage":null'
_CLOSERS = (b"}", b",")  # what may follow a compact null usage: its object's end or the next member
_REPLACES = ((b',"usage":null,', b","), (b',"usage":null}', b"}"))  # a compact null usage and its closer
# A read longer than this is stripped, inspected and written in pieces of whole events, one loop turn apart
# (``gateway.body.Observed``): the outermost layer, so every step after the read is paced.
PIECE_BYTES = 16 * 1024
_MAX_TAIL = 64 * 1024  # an SSE event longer than this (none in practice) disables stripping: never buffer


class UsagePolicy:
    name = "usage"
    operations = CAPTURE_OPERATIONS  # embeddings pass untouched: their chain leaves it out (gateway.chain)

    def __init__(self, inject: bool) -> None:
        self.inject = inject

    async def __call__(self, ex: Exchange, next: Next) -> UpstreamResponse:
        hidden = (
            self.inject
            and ex.request.stream
            and ex.request.operation in INJECT_OPERATIONS
            and ask_for_usage(ex)
        )
        resp = await next(ex)
        if resp.status >= 300 or ex.request.operation not in CAPTURE_OPERATIONS:
            return resp  # an error answer is not charged; embeddings produce no text
        sse = resp.is_sse
        capture = Capture(sse=sse)
        ex.state.set(CAPTURE_KEY, capture)
        if not sse:  # the relay keeps a JSON answer's chunks anyway and hands them to the capture at its end
            return resp  # (``gateway.relay``): no wrapper, no call per chunk
        if hidden:
            stripper = UsageStripper(ex, capture)
            return resp.with_body(Observed(resp.body, on_chunk=stripper.chunk, flush=stripper.flush,
                                           piece_bytes=PIECE_BYTES))
        return resp.with_body(Observed(resp.body, on_chunk=capture.keep, piece_bytes=PIECE_BYTES))


def ask_for_usage(ex: Exchange) -> bool:
    """Add ``include_usage`` to a stream request that lacks it; True when the client did not ask."""
    body = ex.body
    if body is None:
        return False
    opts = body.get("stream_options")
    if isinstance(opts, dict) and opts.get("include_usage") is True:
        return False
    if opts is None and not ex.modified:
        raw = ex.raw_body
        at = raw.find(b"{")
        if at >= 0 and not raw[:at].strip():
            ex.body = {**body, "stream_options": {"include_usage": True}}
            # One copy of a large body, not three (no slice copies); duplicate keys impossible: none existed.
            ex.raw_body = b"".join((memoryview(raw)[: at + 1], _SPLICE, memoryview(raw)[at + 1 :]))
            if ex.blobs is not None:  # point the blobs into the copy, so the old body can be freed
                ex.blobs = ex.blobs.moved(ex.raw_body, after=at + 1, by=len(_SPLICE))
            return True
    merged = {**opts, "include_usage": True} if isinstance(opts, dict) else {"include_usage": True}
    ex.set_body({**body, "stream_options": merged})
    return True


class UsageStripper:
    """Relays whole SSE events without the usage the client did not ask for, keeping chunk references.

    Events are cut with the core SSE splitter (any line end, split anywhere); the stripped
    stream leaves with ``\n`` line ends. An event longer than ``_MAX_TAIL`` stops stripping.
    """

    __slots__ = ("capture", "ex", "split", "strip")

    def __init__(self, ex: Exchange, capture: Capture) -> None:
        self.ex, self.capture = ex, capture
        self.strip = True
        self.split = EventSplitter(limit=_MAX_TAIL)

    def chunk(self, chunk: bytes) -> bytes:
        self.capture.add(chunk)
        if not self.strip:
            return chunk
        ready = self.split.feed(chunk)
        if self.split.overflow:
            self.strip = False  # not an SSE stream we understand: pass through
            return ready
        at = ready.find(b'"usage"')  # the one full scan of a usual chunk (issue 21: each scan ~0.25 us)
        if at > 0 and ready.startswith(_COMPACT_NULL, at - 1) and ready[at + 12:at + 13] in _CLOSERS \
                and ready.find(b'"usage"', at + 7) < 0:
            out = ready[:at - 1] + ready[at + 12:]  # the usual chunk: its one usage key, compact and null
        elif at >= 0:
            out, clean = _stripped(ready, self.ex)
            if not clean:
                return out
        else:
            out = ready
        view = self.ex.view
        if view is not None and out:  # no usage key left, proven here: the relay's inspector need not look
            view.vouched = out
        return out

    def flush(self) -> bytes:
        return self.split.rest()


def strip_usage(events: bytes, ex: Exchange) -> bytes:
    """Remove usage from complete ``\n``-framed SSE events (each ending in a blank line), recording it."""
    return _stripped(events, ex)[0]


def _stripped(events: bytes, ex: Exchange) -> tuple[bytes, bool]:
    """``strip_usage``, and whether the result is proven to hold no ``"usage"`` key (an event that is not
    JSON keeps its bytes, usage or not)."""
    at = events.find(_COMPACT_NULL)
    if at >= 0:  # the providers' compact form: plain byte replaces, no regex
        # A provider's events all end their null usage alike (``}``: the last member; ``,``: padding after
        # it): the first one's closer picks the replace that usually leaves no usage key, and the other
        # replace (a full pass over a 64 KiB block, ~30 us) runs only when the first key left is such a null.
        first, second = _REPLACES if events[at + 13:at + 14] == b"," else _REPLACES[::-1]
        events = events.replace(*first)
        left = events.find(b'"usage"')  # ``find``, not ``in``: see ``gateway.sse.CR``
        if left > 0 and events.startswith(second[0], left - 1):  # a null usage with the other closer
            events = events.replace(*second)
            left = events.find(b'"usage"')
        if left < 0:
            return events, True
        # What is left (a usage object, a null in another spelling, a null after it) is for the steps below.
    # Only a usage key not followed by a compact object can be a null one in another spelling (spaces): the
    # regex's scan of a many-event block (a fast provider's burst, a whole answer read at once) is skipped
    # otherwise.
    if events.find(b"null") >= 0 and events.count(b'"usage"') != events.count(b'"usage":{'):
        events = _NULL_USAGE.sub(b"", events)
    if events.find(b'"usage"') < 0:
        return events, True
    kept = [out for event in events.split(b"\n\n") if event and (out := _keep(event, ex)) is not None]
    return b"".join(event + b"\n\n" for event in kept), False


def _keep(event: bytes, ex: Exchange) -> bytes | None:
    """The event without its usage (None: it carried nothing else)."""
    if event.find(b'"usage"') < 0:
        return event
    _, payload = parse_event(event)
    try:
        obj: Any = orjson.loads(payload) if payload else None
    except orjson.JSONDecodeError:
        return event
    if not isinstance(obj, dict) or "usage" not in obj:
        return event
    usage = usage_from_response_obj(obj)
    if usage is not None:
        ex.record.reported_usage = usage
    if not obj.get("choices"):
        return None
    del obj["usage"]
    fields = [line for line in event.split(b"\n") if not line.startswith(b"data")]
    return b"\n".join([*fields, b"data: " + orjson.dumps(obj)])


async def usage_factory(state: AppState, config: Config) -> UsagePolicy:
    return UsagePolicy(inject=config.metrics.inject_stream_usage)
