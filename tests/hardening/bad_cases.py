"""The bad-input catalogue: named requests an HTTP library can send, each with the one answer it must get.

Shares the ``Case`` shape of ``tests/e2e/test_bad_input.py`` (that module keeps its ~50 basic cases; these
are the rest). Every case is sent with the catalogue gateway's valid key unless it is an auth case, and
must get a 4xx in the OpenAI error shape without reaching the provider.
"""
from __future__ import annotations

import gzip
import zlib
from typing import Any

import orjson

from tests.e2e.test_bad_input import Case

KEY = "sk-catalogue-key"
CHAT, EMB, CMP, RSP = "/v1/chat/completions", "/v1/embeddings", "/v1/completions", "/v1/responses"
OPS = (CHAT, EMB, CMP, RSP)
USER = [{"role": "user", "content": "hi"}]
VALID = orjson.dumps({"model": "gpt-4o", "messages": USER})
LIMIT = 65536  # server.max_body_bytes of the catalogue gateway


def chat(**fields: Any) -> bytes:
    return orjson.dumps({"model": "gpt-4o", "messages": USER, **fields})


def chat_msgs(messages: Any) -> bytes:
    return orjson.dumps({"model": "gpt-4o", "messages": messages})


def bad(name: str, body: bytes | None, code: str, status: int = 400, **kw: Any) -> Case:
    return Case(name, body, status, code=code, **kw)


def auth_cases() -> list[Case]:
    def c(name: str, headers: dict[str, str], code: str = "invalid_api_key") -> Case:
        return Case(f"auth: {name}", VALID, 401, code=code, headers={"Authorization": "", **headers})

    return [
        c("no authorization header", {}, "missing_api_key"),
        c("empty bearer", {"Authorization": "Bearer "}, "missing_api_key"),
        c("bearer keyword only", {"Authorization": "Bearer"}, "missing_api_key"),
        c("wrong key", {"Authorization": "Bearer sk-wrong"}),
        c("key with a suffix", {"Authorization": f"Bearer {KEY}x"}),
        c("key prefix only", {"Authorization": f"Bearer {KEY[:-1]}"}),
        c("key in other case", {"Authorization": f"Bearer {KEY.upper()}"}),
        c("basic scheme", {"Authorization": "Basic dXNlcjpwYXNz"}, "missing_api_key"),
        c("token scheme", {"Authorization": f"Token {KEY}"}, "missing_api_key"),
        c("key without scheme", {"Authorization": KEY}, "missing_api_key"),
        c("wrong azure api-key", {"api-key": "sk-wrong"}),
        c("10 KB key", {"Authorization": "Bearer " + "k" * 10_000}),
        c("key with inner space", {"Authorization": f"Bearer {KEY[:5]} {KEY[5:]}"}),
        c("two bearer tokens", {"Authorization": f"Bearer sk-wrong, Bearer {KEY}"}),
        c("x-api-key is not a gateway key", {"x-api-key": KEY}, "missing_api_key"),
        Case(
            "auth: key in the query string",
            VALID,
            401,
            code="missing_api_key",
            path=f"{CHAT}?api_key={KEY}",
            headers={"Authorization": ""},
        ),
    ]


def method_path_cases() -> list[Case]:
    out = [
        Case(
            f"method: {m} on {p}",
            None if m in ("GET", "DELETE", "OPTIONS") else b"{}",
            405,
            code="method_not_allowed",
            method=m,
            path=p,
        )
        for p in OPS
        for m in ("GET", "PUT", "DELETE", "PATCH", "OPTIONS")
    ]
    out += [
        Case(f"method: {m} on /v1/models", b"{}", 405, code="method_not_allowed", method=m, path="/v1/models")
        for m in ("POST", "PUT", "DELETE")
    ]
    paths = [
        "/v1/chat",
        "/v1/chat/completion",
        "/v1/chat/completions/extra",
        "/v2/chat/completions",
        "/V1/chat/completions",
        "/v1/Chat/Completions",
        "/v1/chat/completions/",
        "/v1//chat/completions",
        "/v1/files",
        "/v1/batches",
        "/v1/fine_tuning/jobs",
        "/v1/audio/speech",
        "/v1/images/generations",
        "/v1/assistants",
        "/v1/embeddings/x",
        "/tools/none/x",
        "/.env",
        "/admin/usage",
        "/admin/stats",
        "/v1/chat%2Fcompletions",
        "/%2e%2e/v1/chat/completions",
        "/v1/chat/completions%00",
        "/index.html",
        "/v1",
        "/api/v1/chat/completions",
    ]
    out += [Case(f"path: {p}", VALID, 404, code="unknown_url", path=p) for p in paths]
    return out


def size_cases() -> list[Case]:
    big = b'{"model":"gpt-4o","messages":[{"role":"user","content":"' + b"x" * LIMIT + b'"}]}'
    gz = {"Content-Encoding": "gzip"}
    return [
        bad("size: one byte over the limit", b"{" + b" " * LIMIT + b"}", "request_too_large", 413),
        bad("size: 1 MB body", big * 15, "request_too_large", 413),
        bad("size: 4 MB of whitespace", b" " * 4_000_000, "request_too_large", 413),
        bad(
            "size: gzip bomb 10 MB of zeros",
            gzip.compress(b"0" * 10_000_000),
            "request_too_large",
            413,
            headers=gz,
        ),
        bad(
            "size: gzip bomb of spaces around valid json",
            gzip.compress(b" " * 2_000_000 + VALID),
            "request_too_large",
            413,
            headers=gz,
        ),
        bad("size: gzip just over the limit", gzip.compress(big), "request_too_large", 413, headers=gz),
        bad(
            "size: deflate bomb",
            zlib.compress(b"[" * 1 + b"0," * 3_000_000 + b"0]"),
            "request_too_large",
            413,
            headers={"Content-Encoding": "deflate"},
        ),
        bad(
            "size: uppercase GZIP bomb",
            gzip.compress(b"a" * 3_000_000),
            "request_too_large",
            413,
            headers={"Content-Encoding": "GZIP"},
        ),
        bad(
            "encoding: gzip of gzip is not json",
            gzip.compress(gzip.compress(VALID)),
            "invalid_json",
            headers=gz,
        ),
        bad(
            "encoding: truncated gzip (inflates to truncated json)",
            gzip.compress(VALID)[:-12],
            "invalid_json",
            headers=gz,
        ),
        bad(
            "encoding: gzip header only (inflates to nothing)",
            gzip.compress(VALID)[:10],
            "invalid_json",
            headers=gz,
        ),
        bad(
            "encoding: gzip with garbage after",
            gzip.compress(VALID) + b"garbage",
            "invalid_encoding",
            headers=gz,
        ),
        bad(
            "encoding: deflate that is not",
            b"not deflate at all",
            "invalid_encoding",
            headers={"Content-Encoding": "deflate"},
        ),
        bad(
            "encoding: compress",
            VALID,
            "unsupported_content_encoding",
            415,
            headers={"Content-Encoding": "compress"},
        ),
        bad(
            "encoding: x-gzip",
            VALID,
            "unsupported_content_encoding",
            415,
            headers={"Content-Encoding": "x-gzip"},
        ),
        bad(
            "encoding: gzip, gzip",
            gzip.compress(gzip.compress(VALID)),
            "unsupported_content_encoding",
            415,
            headers={"Content-Encoding": "gzip, gzip"},
        ),
        bad(
            "encoding: bogus",
            VALID,
            "unsupported_content_encoding",
            415,
            headers={"Content-Encoding": "rot13"},
        ),
        bad(
            "size: 64 KB of nested arrays",
            b'{"model":"gpt-4o","x":' + b"[" * 40_000 + b"]" * 40_000 + b"}",
            "request_too_large",
            413,
        ),
    ]


def truncations() -> list[Case]:
    body = chat(temperature=0.5, stop=["a"], tools=[{"type": "function", "function": {"name": "f"}}])
    cuts = sorted(
        {1, 2, 5, 10, 11, 20, len(body) // 3, len(body) // 2, len(body) - 10, len(body) - 2, len(body) - 1}
    )
    return [bad(f"json: truncated at byte {n}", body[:n], "invalid_json") for n in cuts]


def json_cases() -> list[Case]:
    m = b'{"model":"gpt-4o","messages":[{"role":"user","content":"'
    end = b'"}]}'
    deep_obj = (
        b'{"model":"gpt-4o","messages":[{"role":"user","content":"x"}],"x":'
        + b'{"a":' * 10_000
        + b"1"
        + b"}" * 10_000
        + b"}"
    )
    return [
        *truncations(),
        bad("utf-8: lone continuation byte", m + b"\x80" + end, "invalid_json"),
        bad("utf-8: overlong slash", m + b"\xc0\xaf" + end, "invalid_json"),
        bad("utf-8: encoded surrogate", m + b"\xed\xa0\x80" + end, "invalid_json"),
        bad("utf-8: truncated 3-byte sequence", m + b"\xe2\x82" + end, "invalid_json"),
        bad("utf-8: 0xff byte", m + b"\xff" + end, "invalid_json"),
        bad("utf-8: latin-1 text", m + "café".encode("latin-1") + end, "invalid_json"),
        bad("utf-8: code point above 10FFFF", m + b"\xf4\x90\x80\x80" + end, "invalid_json"),
        bad("utf-8: in a key", b'{"mod\xffel":"gpt-4o","messages":[]}', "invalid_json"),
        bad("utf-16 body", VALID.decode().encode("utf-16"), "invalid_json"),
        bad("utf-8 BOM", b"\xef\xbb\xbf" + VALID, "invalid_json"),
        bad("json: NaN temperature", b'{"model":"gpt-4o","messages":[],"temperature":NaN}', "invalid_json"),
        bad("json: Infinity", b'{"model":"gpt-4o","messages":[],"temperature":Infinity}', "invalid_json"),
        bad("json: -Infinity", b'{"model":"gpt-4o","messages":[],"temperature":-Infinity}', "invalid_json"),
        bad("json: 1e400", b'{"model":"gpt-4o","messages":[],"temperature":1e400}', "invalid_json"),
        bad(
            "json: 400-digit integer",
            b'{"model":"gpt-4o","messages":[],"max_tokens":1' + b"0" * 400 + b"}",
            "invalid_json",
        ),
        bad(
            "json: 2**64 max_tokens (a float)",
            b'{"model":"gpt-4o","messages":[{"role":"user","content":"h"}],'
            b'"max_tokens":18446744073709551616}',
            "invalid_type",
        ),
        bad(
            "json: max_tokens 1e3 (a float)",
            b'{"model":"gpt-4o","messages":[{"role":"user","content":"h"}],"max_tokens":1e3}',
            "invalid_type",
        ),
        bad("json: leading zero", b'{"model":"gpt-4o","messages":[],"n":01}', "invalid_json"),
        bad("json: single quotes", b"{'model':'gpt-4o'}", "invalid_json"),
        bad("json: comment", b'{"model":"gpt-4o", /* hi */ "messages":[]}', "invalid_json"),
        bad("json: trailing comma", b'{"model":"gpt-4o","messages":[],}', "invalid_json"),
        bad("json: unquoted key", b'{model:"gpt-4o"}', "invalid_json"),
        bad("json: raw newline in string", m + b"a\nb" + end, "invalid_json"),
        bad("json: raw NUL in string", m + b"a\x00b" + end, "invalid_json"),
        bad("json: lone high surrogate escape", m + b"\\ud800" + end, "invalid_json"),
        bad("json: bad escape", m + b"\\q" + end, "invalid_json"),
        bad("json: two objects", VALID + VALID, "invalid_json"),
        bad("json: null", b"null", "invalid_json"),
        bad("json: true", b"true", "invalid_json"),
        bad("json: number", b"42", "invalid_json"),
        bad("json: empty object", b"{}", "missing_model"),
        bad(
            "json: nested 100 arrays",
            b'{"model":"gpt-4o","x":' + b"[" * 100 + b"]" * 100 + b"}",
            "json_too_deep",
        ),
        bad(
            "json: nested 1000 arrays",
            b'{"model":"gpt-4o","x":' + b"[" * 1000 + b"]" * 1000 + b"}",
            "json_too_deep",
        ),
        bad("json: objects nested 10,000 deep", deep_obj, "json_too_deep"),
        bad("json: 10,000 unclosed brackets", b'{"model":"gpt-4o","x":' + b"[" * 10_000, "json_too_deep"),
        bad(
            "json: deep inside messages",
            chat_msgs([{"role": "user", "content": "x", "y": [[[[[[[[[[[]]]]]]]]]]]}]).replace(
                b"[[[[[[[[[[[]]]]]]]]]]]", b"[" * 70 + b"]" * 70
            ),
            "json_too_deep",
        ),
        bad(
            "json: duplicate model",
            b'{"model":"gpt-4o","messages":[{"role":"user","content":"h"}],"model":"gpt-4o-mini"}',
            "duplicate_key",
        ),
        bad(
            "json: duplicate model, second not a string",
            b'{"model":"gpt-4o","messages":[{"role":"user","content":"h"}],"model":5}',
            "duplicate_key",
        ),
        bad(
            "json: duplicate stream",
            b'{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"h"}],"stream":false}',
            "duplicate_key",
        ),
        bad(
            "json: duplicate model in embeddings",
            b'{"model":"text-embedding-3-small","input":"a","model":"text-embedding-3-large"}',
            "duplicate_key",
            path=EMB,
        ),
    ]


def model_cases() -> list[Case]:
    def body(model: Any) -> bytes:
        return orjson.dumps({"model": model, "messages": USER})

    return [
        bad("model: null", body(None), "missing_model"),
        bad("model: list", body(["gpt-4o"]), "invalid_type"),
        bad("model: object", body({"name": "gpt-4o"}), "invalid_type"),
        bad("model: boolean", body(True), "invalid_type"),
        bad("model: 257 characters", body("gpt-" + "x" * 253), "invalid_type"),
        bad("model: control character", body("gpt-4o\n"), "invalid_value"),
        bad("model: NUL", body("gpt\u00004o"), "invalid_value"),
        bad("model: escape sequence", body("gpt-4o\u001b[31m"), "invalid_value"),
        Case("model: unknown", body("llama-unknown"), 404, code="model_not_found"),
        Case("model: unknown with path chars", body("../../gpt-4o"), 404, code="model_not_found"),
    ]
