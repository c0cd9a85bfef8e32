"""Configuration of the mock upstream (kept apart so every mock module can import it)."""

from __future__ import annotations

from dataclasses import dataclass

from .quota import DEFAULT_RPM, DEFAULT_TPM


@dataclass(frozen=True, slots=True, kw_only=True)
class MockConfig:
    """Knobs that shape the mock's latency profile and output.

    Latency is explicit (not random) so benchmarks measure the gateway, not noise, unless
    ``ttft_sigma`` asks for a real provider's spread.
    """

    # Delay before the first content token (streams: after headers + role chunk;
    # non-stream: before the response).
    ttft_ms: float = 0.0
    # > 0: each answer's TTFT is ttft_ms x a log-normal draw of this sigma (median ttft_ms), seeded by
    # ``seed``: real providers' first tokens vary (0.3 puts the p99 at ~2x the median).
    ttft_sigma: float = 0.0
    tokens_per_s: float = 0.0  # 0 = as fast as possible; else delay 1/tokens_per_s between content chunks
    seed: int = 0
    default_tokens: int = 16  # completion length when max_tokens absent
    # > 0: a provider-like prompt cache per mock instance: a chat request whose leading messages were
    # seen before (at least this many prompt tokens of them) reports them as cached_tokens.
    prompt_cache_min_tokens: int = 0
    # What the x-ratelimit-* headers advertise when no quota is configured (a bench whose gateway config
    # names larger limits sets these to agree with it: otherwise every answer teaches its buckets down).
    advertised_rpm: int = DEFAULT_RPM
    advertised_tpm: int = DEFAULT_TPM
    fixtures_dir: str = ""  # provider fixtures replayed on ``x-mock-fixture`` (empty: tests/data/providers)
