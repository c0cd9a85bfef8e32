"""Per-request context shared by the mock's endpoint handlers.

Everything a handler needs (config, the Attempt being recorded, the fault in
force, the x-mock-* knobs) travels in one object, so handlers stay pure
functions of it and no state leaks between requests.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from .config import MockConfig
from .errors import MockHTTPError
from .faults import FaultSpec
from .recorder import Attempt, Recorder


@dataclass(slots=True, kw_only=True)
class RequestContext:
    request: web.Request
    cfg: MockConfig
    recorder: Recorder
    attempt: Attempt
    fault: FaultSpec
    body: Any
    header_tokens: int | None
    tool_calls_header: int | None
    no_usage: bool
    success_outcome: str = "completed"
    prompt_cache: set[bytes] | None = None  # the instance's prompt cache (MockConfig.prompt_cache_min_tokens)
    rng: random.Random | None = None  # the instance's seeded draws (MockConfig.ttft_sigma)
    _ttft: float | None = None  # this answer's TTFT, drawn once

    @property
    def ttft_s(self) -> float:
        if self._ttft is None:
            if self.fault.ttft_ms is not None:
                ms = self.fault.ttft_ms  # a scripted fault's TTFT is exact
            else:
                spread = self.rng.lognormvariate(0.0, self.cfg.ttft_sigma) \
                    if self.rng is not None and self.cfg.ttft_sigma > 0 else 1.0
                ms = self.cfg.ttft_ms * spread
            self._ttft = max(0.0, ms) / 1000.0
        return self._ttft

    @property
    def token_interval_s(self) -> float:
        tps = self.fault.tokens_per_s if self.fault.tokens_per_s is not None else self.cfg.tokens_per_s
        return 1.0 / tps if tps > 0 else 0.0

    def json_body(self) -> dict[str, Any]:
        """The request body as a JSON object, or a 400 like OpenAI's."""
        if not isinstance(self.body, dict):
            raise MockHTTPError(
                400,
                "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
                "using your HTTP library correctly.)",
            )
        return self.body

    def require_model(self) -> str:
        model = self.json_body().get("model")
        if not isinstance(model, str) or not model:
            raise MockHTTPError(400, "you must provide a model parameter", param="model")
        return model

    def optional_int(self, *names: str) -> int | None:
        """First present integer field among `names` (e.g. max_tokens / max_completion_tokens)."""
        body = self.json_body()
        for name in names:
            value = body.get(name)
            if value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise MockHTTPError(
                    400,
                    f"Invalid '{name}': integer below minimum value 1.",
                    param=name,
                    code="integer_below_min_value",
                )
            return value
        return None

    def wants_stream(self) -> bool:
        return isinstance(self.body, dict) and self.body.get("stream") is True

    def include_obfuscation(self) -> bool:
        """OpenAI pads stream chunks unless ``stream_options.include_obfuscation`` is false."""
        opts = self.body.get("stream_options") if isinstance(self.body, dict) else None
        return not (isinstance(opts, dict) and opts.get("include_obfuscation") is False)

    def include_usage(self) -> bool:
        opts = self.body.get("stream_options") if isinstance(self.body, dict) else None
        return isinstance(opts, dict) and opts.get("include_usage") is True and not self.no_usage


def parse_header_int(headers: Any, name: str, *, minimum: int) -> int | None:
    """Integer x-mock-* header, 400 on garbage so typos in tests are loud."""
    raw = headers.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise MockHTTPError(400, f"header {name} must be an integer") from None
    if value < minimum:
        raise MockHTTPError(400, f"header {name} must be >= {minimum}")
    return value
