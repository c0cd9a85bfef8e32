"""A client's request body, decoded once: on the loop when small, in the fair work pool when large.

``decode`` is every pass over a body's bytes but the read: large base64 strings set aside
(``gateway/blobs.py``), the JSON parsed and checked (``gateway/request_json.py``), the shape validated
(``gateway/request_schema.py``).
Below ``DECODE_INLINE_MAX_BYTES`` that costs less than a thread hop and runs on the loop. Above it,
the job goes to the gateway's ``WorkPool`` (``gateway/tokens/pool.py``) under the client's tenant
namespace (issue 15), not to an unbounded executor:

- a few threads at most: the parse holds the GIL, so more threads only made the event loop wait
  behind more of them for the GIL (16 prompts of 500 KB at once, each decoded in its own thread,
  stalled every other client's stream);
- fair: a tenant's queue of large bodies delays another tenant's job by at most the jobs running;
- bounded: past the pool's queue per tenant or its time budget the request is answered 503 with
  ``Retry-After`` (``gateway_busy``), counted in ``gateway_work_total{kind="decode"}``.

A refusal found while decoding (bad JSON, too deep, a wrong type) comes back as the same 400, and
any other error as the same 500 as on the loop.
"""
from __future__ import annotations

from functools import partial
from typing import Any

from gateway import long_arrays, long_strings
from gateway.blobs import Blobs
from gateway.blobs import extract as extract_blobs
from gateway.errors import LocalReply
from gateway.received import Received
from gateway.request_json import parse_json
from gateway.request_schema import validate
from gateway.tokens.pool import WorkPool

DECODE_INLINE_MAX_BYTES = 256 * 1024  # below this, decoding on the loop costs less than a thread hop
Decoded = tuple[dict[str, Any], Blobs | None]
Joined = tuple[bytes, dict[str, Any], Blobs | None]  # the body's bytes too, when it came in pieces
Raw = bytes | list[bytes] | Received  # whole, its received pieces, or a buffer it was received into


def decode(raw: bytes, operation: str) -> Decoded:
    """Blobs out, JSON parsed, shape validated; raises ``LocalReply`` (400) on bad input."""
    parsed, blobs = extract_blobs(raw)  # a large body's base64 images stay out of the parsed JSON
    # a large body's long strings decoded one by one, or its long ``input`` array of strings parsed in
    # pieces (the GIL given up between them); else one parse
    body = long_strings.parse(parsed)
    if body is None:
        body = long_arrays.parse(parsed)
    if body is None:
        body = parse_json(parsed)
    del parsed
    validate(operation, body)
    return body, blobs


async def decode_body(work: WorkPool, tenant: str, raw: Raw, operation: str) -> Joined:
    """The body's bytes, ``decode``d: on the loop for a small body, else in ``work`` (fair per ``tenant``,
    budgeted). A body still in its received pieces is joined there too: a multi-MB join is one C call
    that keeps the GIL ~3-5 ms (fresh pages), and four bodies that arrived together were joined back to
    back on the loop (issue 15)."""
    size = _size(raw)
    if size < DECODE_INLINE_MAX_BYTES:
        whole = _joined(raw)
        return (whole, *decode(whole, operation))
    outcome = await work.run(tenant, "decode", partial(_decode_or_error, raw, operation), _busy,
                             holds_gil=True)
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


def _size(raw: Raw) -> int:
    if isinstance(raw, Received):
        return raw.size
    return len(raw) if isinstance(raw, bytes) else sum(map(len, raw))


def _joined(raw: Raw) -> bytes:
    if isinstance(raw, Received):
        return raw.take()
    return raw if isinstance(raw, bytes) else b"".join(raw)  # one piece: itself, not a copy


def _decode_or_error(raw: Raw, operation: str) -> Joined | Exception:
    """In a worker: the refusal (or a failure: a bug is a 500, as on the loop, not a "busy" 503) is a
    value, so the pool hands it back instead of its fallback."""
    try:
        whole = _joined(raw)
        return (whole, *decode(whole, operation))
    except Exception as error:  # noqa: BLE001 - raised again on the loop, where the handler answers it
        return error


def _busy() -> Joined | Exception:
    """The pool's fallback (queue full, over budget, or the job failed): nothing was decoded."""
    raise LocalReply(503, "The gateway is busy decoding large request bodies; retry after the delay in "
                     "Retry-After.", type="server_error", code="gateway_busy",
                     headers={"retry-after": "1", "x-should-retry": "true"})
