"""What the benchmark runs: the gateway configs, the request bodies, and the scenarios.

Each gateway variant is a config dict (``gateway_config(upstream, overrides)``),
so a scenario can be pointed at any combination of policies; ``ALL_OFF`` and
``ALL_ON`` are the two the issue compares. ``ALL_ON`` names every policy block
the config schema knows; policies that are not built yet simply have nothing to
run, and the report lists which policies the gateway actually built.

Targets are named columns: ``direct`` (the fake provider itself), ``nginx``
(nginx proxying to it: the C floor of relaying), ``static`` (nginx answering a
fixed completion: the client's and kernel's floor), ``bare`` (the ~100-line
aiohttp relay: the Python floor), and one per gateway variant (``gw-off``,
``gw-all``).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

ROOT = Path(__file__).resolve().parents[1]
Kind = Literal["requests", "streams", "cache", "idle", "workers"]

HEADERS = {"Content-Type": "application/json", "Authorization": "Bearer sk-bench-client"}
STREAM_FAULT = "ttft_ms=50;tokens_per_s=1000"  # 50 ms to the first token, then 1 ms between chunks
# The role chunk and a first token, then nothing for five minutes. One chunk is not enough: the gateway
# commits a stream at its first meaningful event, so a role-only stream was still waiting for its headers
# and ended as an upstream error (the idle figure then measured finished requests, not open streams).
IDLE_FAULT = "stall_after_chunks=2;stall_ms=300000"
CHAT_PATH = "/v1/chat/completions"


def chat_body(content: str, *, stream: bool = False, max_tokens: int | None = 16) -> bytes:
    """A deterministic (cacheable) chat request; ``NONCE`` is replaced per request when unique.

    ``max_tokens=None`` lets the answer end on ``stop`` rather than ``length``: only complete answers
    are cached.
    """
    stream_part = ',"stream":true' if stream else ""
    limit = f',"max_tokens":{max_tokens}' if max_tokens is not None else ""
    return ('{"model":"gpt-4o-mini","temperature":0' + limit + stream_part
            + ',"messages":[{"role":"system","content":"You are a terse assistant."},'
            '{"role":"user","content":"' + content + '"}]}').encode()


# No max_tokens: the mock's 16-token answer ends on "stop", so the exact cache really stores each miss.
SMALL = chat_body("Say hello to bench request NONCE.", max_tokens=None)
STREAM = chat_body("Count to twenty, request NONCE.", stream=True, max_tokens=None)  # x-mock-tokens: 20
CACHED = chat_body("The same question every time: what is the capital of France?", max_tokens=None)

_WORDS = ("the agent reads a file then calls a tool and waits for the model to answer with a plan "  # noqa: SIM905
          "before it edits code runs tests and reports results back to the user who asked").split()


def big_prompt_body(tokens: int = 50_000) -> bytes:
    """A chat request whose user message is about ``tokens`` tokens of plain English words."""
    words = [f"{_WORDS[i % len(_WORDS)]}" for i in range(tokens)]
    # One line break every 40 words keeps it looking like a pasted document.
    text = "\\n".join(" ".join(words[i:i + 40]) for i in range(0, len(words), 40))
    return chat_body(f"NONCE {text}")


def gateway_config(upstream_url: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """A gateway config with one upstream ``mock`` (its own key) and a catch-all route."""
    cfg: dict[str, Any] = {
        "server": {"drain_s": 1, "grace_s": 0},
        "upstreams": {"mock": {"base_url": upstream_url, "api_key": "sk-upstream-secret",
                               "pool": {"max_connections": 2048, "keepalive_s": 30}}},
        "routes": [{"match": {"model": "*"}, "upstream": "mock"}],
    }
    return _merge(cfg, overrides or {})


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


# Every policy off: the cost of the core alone (parse, validate, route, relay, one log line).
ALL_OFF: dict[str, Any] = {
    "metrics": {"enabled": False},
    "upstreams": {"mock": {"retry": {"max_attempts": 1}}},
    "ledger": {"enabled": False},
    "tracing": {"enabled": False},
    "cache": {"exact": {"enabled": False}, "semantic": {"enabled": False}, "coalesce": {"enabled": False},
              "embeddings": {"enabled": False}},
    "compression": {"enabled": False},
}

# Every policy the issue names, on: metrics/usage and the usage ledger, exact cache (lookup + fill on each
# miss), single flight, client and upstream rate limits (limits far above the load, so they are checked but
# never bite), retry, breaker, compression (a context window makes it count every prompt; nothing to compress
# in small prompts: the check is what costs) and a max_tokens budget. Tracing stays off (it needs a collector)
# and so does the semantic cache (opt-in, an embedding model per request).
# The upstream's limits in ALL_ON, which the bench's mock provider also advertises in its x-ratelimit-*
# headers (``procs.start_mock``): a provider whose headers said less would teach the bucket down on every
# answer (below half of it, where rate-limit leases stop).
UPSTREAM_RPM, UPSTREAM_TPM = 100_000_000, 100_000_000_000
ALL_ON: dict[str, Any] = {
    "metrics": {"enabled": True},
    "ledger": {"enabled": True},
    "models": {"gpt-4o-mini": {"context_window": 128_000}},
    "budgets": {"max_tokens_cap": 4096},
    "tracing": {"enabled": False},
    "auth": {"mode": "keys", "keys": [{"key": "sk-bench-client", "tenant": "bench", "rpm": 100_000_000,
                                       "tpm": 100_000_000_000}]},
    "cache": {"exact": {"enabled": True}, "semantic": {"enabled": False}, "coalesce": {"enabled": True}},
    "compression": {"enabled": True},
    "upstreams": {"mock": {"rate_limit": {"rpm": UPSTREAM_RPM, "tpm": UPSTREAM_TPM},
                           "retry": {"max_attempts": 3}, "circuit_breaker": {"consecutive_failures": 5}}},
}


def _one_on(**blocks: Any) -> dict[str, Any]:
    return _merge(ALL_OFF, blocks)


# One policy (family) on at a time over ALL_OFF: what each costs, so a miss of the CPU target can be placed.
SINGLE_POLICY: dict[str, dict[str, Any]] = {
    "gw+metrics": _one_on(metrics=ALL_ON["metrics"]),
    "gw+ledger": _one_on(ledger=ALL_ON["ledger"]),
    "gw+cache": _one_on(cache=ALL_ON["cache"]),
    "gw+ratelimit": _one_on(auth=ALL_ON["auth"], upstreams={"mock": {"rate_limit": ALL_ON["upstreams"]["mock"]
                                                                     ["rate_limit"]}}),
    "gw+compression": _one_on(models=ALL_ON["models"], compression=ALL_ON["compression"]),
    "gw+budget": _one_on(budgets=ALL_ON["budgets"]),
    "gw+retry": _one_on(upstreams={"mock": {"retry": {"max_attempts": 3}}}),
}



def default_overrides(path: Path = ROOT / "config.yaml") -> dict[str, Any]:
    """What ``make run`` serves: ``config.yaml``'s blocks other than its server, upstreams and routes (the
    bench points those at the mock), i.e. the defaults of every policy the example config does not name."""
    raw = yaml.safe_load(path.read_text()) or {}
    return {k: v for k, v in raw.items() if k not in ("upstreams", "routes", "server")}


# gw-default-aiohttp: the default config on the aiohttp upstream client (``pool.client: aiohttp``; the default
# is the raw client since issue #21, bench/results/2026-12-06-raw-client.md measured both).
AIOHTTP_CLIENT: dict[str, Any] = {"upstreams": {"mock": {"pool": {"client": "aiohttp"}}}}
# The default config with one cache feature off: what each adds (bench.ttft_load_ab, bench.instr_cost).
DEFAULT_WITHOUT: dict[str, dict[str, Any]] = {
    "def-nocoal": _merge(default_overrides(), {"cache": {"coalesce": {"enabled": False}}}),
    "def-noexact": _merge(default_overrides(), {"cache": {"exact": {"enabled": False}}}),
    "def-nocache": _merge(default_overrides(), {"cache": {"exact": {"enabled": False},
                                                          "coalesce": {"enabled": False}}}),
    "def-noledger": _merge(default_overrides(), {"ledger": {"enabled": False}}),
    "def-nometrics": _merge(default_overrides(), {"metrics": {"enabled": False}}),
    "def-noretry": _merge(default_overrides(), {"upstreams": {"mock": {"retry": {"max_attempts": 1}}}}),
}
GATEWAYS: dict[str, dict[str, Any]] = {"gw-off": ALL_OFF, "gw-default": default_overrides(), "gw-all": ALL_ON,
                                       "gw-default-aiohttp": _merge(default_overrides(), AIOHTTP_CLIENT),
                                       **SINGLE_POLICY, **DEFAULT_WITHOUT}


@dataclass(frozen=True, slots=True, kw_only=True)
class Scenario:
    name: str
    title: str
    kind: Kind
    targets: tuple[str, ...]
    body: bytes = SMALL
    concurrency: int = 1
    unique: bool = True  # a fresh NONCE per request: caches must miss
    stream: bool = False
    fault: str | None = None  # x-mock-fault header
    mock_tokens: int | None = None  # x-mock-tokens header: answer length (content chunks of a stream)
    duration_scale: float = 1.0
    idle_streams: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def headers(self) -> dict[str, str]:
        out = dict(HEADERS)
        if self.fault:
            out["x-mock-fault"] = self.fault
        if self.mock_tokens:
            out["x-mock-tokens"] = str(self.mock_tokens)
        return out


# portkey and litellm: peer gateways, when installed (``make bench-peers``; bench/peer_procs.py)
# gw-default:cores: the default config as `make run WORKERS=auto` starts it, one worker per core (shared state
# through the supervisor's host Redis); every other gateway target runs one worker, as `make run` does.
REQUEST_TARGETS = ("direct", "nginx", "bare", "portkey", "litellm", "gw-off", "gw-default",
                   "gw-default-aiohttp", "gw-default:cores", "gw-all")
# Portkey 1.15 answers every stream with a 500 on Node 20 ("TypeError: immutable" appending its headers to the
# provider's response): its stream columns would time errors, so streams compare LiteLLM only.
STREAM_TARGETS = tuple(t for t in REQUEST_TARGETS if t != "portkey")


def all_scenarios() -> list[Scenario]:
    return [
        Scenario(
            name="small-c1", title="non-stream small chat, c=1", kind="requests", targets=REQUEST_TARGETS
        ),
        Scenario(
            name="small-c64",
            title="non-stream small chat, c=64",
            kind="requests",
            targets=REQUEST_TARGETS,
            concurrency=64,
        ),
        Scenario(
            name="stream-c1",
            title="stream, TTFT 50 ms, 20 chunks, c=1",
            kind="streams",
            targets=STREAM_TARGETS,
            body=STREAM,
            stream=True,
            fault=STREAM_FAULT,
            mock_tokens=20,
            duration_scale=2.0,
        ),
        Scenario(
            name="stream-c32",
            title="stream, TTFT 50 ms, 20 chunks, c=32",
            kind="streams",
            targets=STREAM_TARGETS,
            body=STREAM,
            stream=True,
            fault=STREAM_FAULT,
            mock_tokens=20,
            concurrency=32,
            duration_scale=1.5,
        ),
        Scenario(
            name="cache-hit",
            title="exact-cache hits, c=1",
            kind="cache",
            targets=("static", "gw-all:healthz", "gw-all"),
            body=CACHED,
            unique=False,
        ),
        Scenario(
            name="prompt-50k",
            title="50k-token prompt, non-stream, c=1",
            kind="requests",
            targets=("direct", "bare", "gw-off", "gw-all"),
            body=big_prompt_body(),
        ),
        Scenario(
            name="idle-1000",
            title="1,000 concurrent idle streams",
            kind="idle",
            targets=("bare", "gw-off", "gw-default", "gw-all"),
            body=STREAM,
            stream=True,
            fault=IDLE_FAULT,
            idle_streams=1000,
        ),
        Scenario(
            name="policies",
            title="each policy alone over all-off, non-stream small chat, c=1",
            kind="requests",
            targets=("direct", "bare", "gw-off", *SINGLE_POLICY, "gw-all"),
        ),
        Scenario(
            name="workers",
            title="1 vs 2 workers, non-stream c=64 (upstream: nginx static if present)",
            kind="workers",
            targets=("gw-off:w1", "gw-off:w2"),
            concurrency=64,
        ),
    ]
