"""gateway/blobs.py: long base64 strings of a large body become markers, and come back byte for byte."""
from __future__ import annotations

import base64
import hashlib
import os

import orjson

from gateway.blobs import MIN_BLOB, MIN_BODY, PREFIX, extract
from tests.support.exchange import build_exchange

IMAGE = base64.b64encode(os.urandom(MIN_BODY)).decode()  # ~1.4 MB of base64


def vision(url: str, **extra: object) -> bytes:
    return orjson.dumps({"model": "gpt-4o", **extra, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {"url": url}}]}]})


def url_of(body: dict[str, object]) -> str:
    return body["messages"][0]["content"][1]["image_url"]["url"]  # type: ignore[index,no-any-return]


def test_data_url_payload_becomes_a_sha256_marker_and_is_restored() -> None:
    raw = vision("data:image/png;base64," + IMAGE)
    parsed, blobs = extract(raw)
    assert blobs is not None and len(parsed) < 1000
    url = url_of(orjson.loads(parsed))
    assert url == "data:image/png;base64," + PREFIX.decode() + hashlib.sha256(IMAGE.encode()).hexdigest()
    assert blobs.restore(orjson.dumps(orjson.loads(parsed))) == raw


def test_a_bare_base64_string_is_replaced_too() -> None:
    raw = orjson.dumps({"model": "m", "input": [{"type": "input_audio", "data": IMAGE}]})
    parsed, blobs = extract(raw)
    assert blobs is not None and orjson.loads(parsed)["input"][0]["data"].startswith(PREFIX.decode())
    assert blobs.restore(parsed) == raw


def test_text_and_short_strings_stay() -> None:
    text = ("hello world " * (MIN_BODY // 10))[: len(IMAGE)]  # long, but spaces are not base64
    raw = vision("data:image/png;base64," + IMAGE[: MIN_BLOB - 1], note=text)
    assert extract(raw) == (raw, None)
    control = vision("data:image/png;base64," + IMAGE[:MIN_BLOB], note=text)
    assert extract(control)[1] is not None  # positive control: one byte longer is replaced


def test_small_bodies_are_not_scanned() -> None:
    raw = vision("data:image/png;base64," + IMAGE[: MIN_BODY // 2])
    assert len(raw) < MIN_BODY and extract(raw) == (raw, None)


def test_a_body_that_already_spells_a_marker_is_left_alone() -> None:
    raw = vision("data:image/png;base64," + IMAGE, note=PREFIX.decode() + "0" * 64)
    assert extract(raw) == (raw, None)


def test_escaped_quotes_never_break_the_json() -> None:
    for prompt in ('say "' + IMAGE + '"', 'say "' + IMAGE, IMAGE + '" said', 'a "b" ' + IMAGE):
        raw = orjson.dumps({"model": "m", "prompt": prompt, "x": IMAGE})
        parsed, blobs = extract(raw)
        assert blobs is not None  # positive control: "x" always is replaced
        assert orjson.loads(parsed)["x"].startswith(PREFIX.decode())
        assert orjson.loads(parsed)["prompt"] == prompt  # base64 beside an escaped quote is text
        assert blobs.restore(orjson.dumps(orjson.loads(parsed))) == raw


def test_a_blob_among_many_short_strings_is_found_and_nothing_else() -> None:
    """The search looks at quote-free runs of the body, not at each of its 100k strings."""
    items = [f"item {i}" for i in range(100_000)]
    raw = orjson.dumps({"model": "m", "input": items, "image": IMAGE, "tail": "x"})
    parsed, blobs = extract(raw)
    assert blobs is not None and len(blobs.spans) == 1
    body = orjson.loads(parsed)
    assert body["input"] == items and body["tail"] == "x" and body["image"].startswith(PREFIX.decode())
    assert blobs.restore(parsed) == raw
    control = orjson.dumps({"model": "m", "input": items, "note": "no image " * 200_000})
    assert len(control) > MIN_BODY and extract(control) == (control, None)


def test_two_images_and_unknown_markers() -> None:
    other = base64.b64encode(os.urandom(MIN_BLOB)).decode()
    raw = orjson.dumps({"model": "m", "a": IMAGE, "b": other, "c": IMAGE})
    parsed, blobs = extract(raw)
    assert blobs is not None and len(blobs.spans) == 2  # the same image twice is one blob
    assert blobs.restore(parsed) == raw
    stray = PREFIX + b"f" * 64
    assert blobs.restore(b'{"x":"' + stray + b'"}') == b'{"x":"' + stray + b'"}'


def test_moved_blobs_follow_a_spliced_copy() -> None:
    raw = vision("data:image/png;base64," + IMAGE, stream=True)
    parsed, blobs = extract(raw)
    assert blobs is not None
    splice = b'"stream_options":{"include_usage":true},'
    copy = raw[:1] + splice + raw[1:]
    moved = blobs.moved(copy, after=1, by=len(splice))
    body = {**orjson.loads(parsed), "stream_options": {"include_usage": True}}
    assert orjson.loads(moved.restore(orjson.dumps(body))) == orjson.loads(copy)
    assert moved.source is copy


def test_exchange_body_bytes_restores_blobs_after_set_body() -> None:
    raw = vision("data:image/png;base64," + IMAGE)
    parsed, blobs = extract(raw)
    ex = build_exchange(orjson.loads(parsed), raw_body=raw, blobs=blobs)
    assert ex.body_bytes() is raw  # unchanged: the client's bytes
    ex.set_body({**orjson.loads(parsed), "model": "gpt-4o-2024-08-06"})
    assert url_of(orjson.loads(ex.body_bytes())) == "data:image/png;base64," + IMAGE


def test_malformed_large_bodies_never_raise() -> None:
    """Extraction runs before the JSON is parsed: any bytes go through, and the parser judges them."""
    for raw in (b"\\" * MIN_BODY + b'"', b'"' + b"\\" * MIN_BODY + b'"', b"x" * MIN_BODY, b'"' * MIN_BODY,
                b'{"a":"' + IMAGE.encode()):
        parsed, blobs = extract(raw)
        assert blobs is None or PREFIX in parsed
