"""Fault specs for the mock upstream and the scripted FIFO of faults.

Resilience tests need upstream misbehaviour that is reproducible and cheap to
express, so a fault is a tiny `key=value;flag` string that can travel in the
`x-mock-fault` header of a single request or be queued through `/_mock/faults`
for requests the test does not control directly (e.g. the gateway's retries).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

_INT_KEYS = frozenset({"status", "retry_after_ms", "reset_after_chunks", "stall_after_chunks", "redirect",
                       "malformed_after_chunks", "error_after_chunks", "end_after_chunks"})
_FLOAT_KEYS = frozenset(
    {"retry_after", "stall_before_first_byte_ms", "stall_ms", "drip_ms", "ttft_ms", "tokens_per_s"}
)
_FLAG_KEYS = frozenset({"reset_before_headers", "malformed_sse", "error_event_first", "reject_prefill"})
_STR_KEYS = frozenset({"location", "error_code"})

# Faults that replace the normal answer; they name the Attempt outcome (`fault:<name>`).
_TERMINAL_ORDER = ("reset_before_headers", "redirect", "status", "error_event_first", "reset_after_chunks")


@dataclass(frozen=True, slots=True, kw_only=True)
class FaultSpec:
    """Parsed `x-mock-fault` spec; every field unset means "behave normally"."""

    status: int | None = None
    retry_after: float | None = None
    retry_after_ms: int | None = None
    reset_before_headers: bool = False
    reset_after_chunks: int | None = None
    stall_before_first_byte_ms: float | None = None
    stall_after_chunks: int | None = None
    malformed_after_chunks: int | None = None  # broken-JSON data event after the N-th, then the rest
    error_after_chunks: int | None = None  # an error event after the N-th event, then a clean close
    end_after_chunks: int | None = None  # a clean close after the N-th event: no rest, no [DONE]
    stall_ms: float | None = None
    drip_ms: float | None = None
    malformed_sse: bool = False
    error_event_first: bool = False
    reject_prefill: bool = False  # 400 for a conversation ending with an assistant message
    redirect: int | None = None
    location: str | None = None
    error_code: str | None = None  # with status: the error body's code, e.g. context_length_exceeded
    ttft_ms: float | None = None
    tokens_per_s: float | None = None

    @property
    def is_empty(self) -> bool:
        return self == _EMPTY

    @property
    def terminal_name(self) -> str | None:
        """Name of the fault that changes the answer itself (None for pure pacing faults)."""
        for name in _TERMINAL_ORDER:
            value = getattr(self, name)
            if value not in (None, False):
                return name
        return "malformed_sse" if self.malformed_sse else None

    def describe(self) -> str:
        """Canonical spec string (stable field order) recorded on the Attempt."""
        parts: list[str] = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None or value is False:
                continue
            if value is True:
                parts.append(f.name)
            elif isinstance(value, float) and value.is_integer():
                parts.append(f"{f.name}={int(value)}")
            else:
                parts.append(f"{f.name}={value}")
        return ";".join(parts)

    def merged(self, override: FaultSpec) -> FaultSpec:
        """Fields set in `override` win; used to layer the header spec over a scripted one."""
        changes = {
            f.name: getattr(override, f.name)
            for f in dataclasses.fields(override)
            if getattr(override, f.name) not in (None, False)
        }
        return dataclasses.replace(self, **changes)


_EMPTY = FaultSpec()
NO_FAULT = _EMPTY


def parse_fault_spec(spec: str) -> FaultSpec:
    """Parse `status=503;retry_after=2` style specs; raises ValueError on anything unknown.

    Being strict matters: a typo in a test's fault spec should fail loudly rather
    than silently produce a healthy response.
    """
    values: dict[str, Any] = {}
    for raw in spec.split(";"):
        item = raw.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        key, value = key.strip().lower(), value.strip()
        if key in _FLAG_KEYS:
            if sep and value.lower() not in ("1", "true", "yes"):
                raise ValueError(f"fault flag {key!r} takes no value")
            values[key] = True
        elif not sep:
            raise ValueError(f"fault item {item!r} needs a value")
        elif key in _INT_KEYS:
            values[key] = _parse_number(key, value, int)
        elif key in _FLOAT_KEYS:
            values[key] = _parse_number(key, value, float)
        elif key in _STR_KEYS:
            values[key] = value
        else:
            raise ValueError(f"unknown fault item {key!r}")
    _validate(values)
    return FaultSpec(**values)


def _parse_number(key: str, value: str, kind: type[int | float]) -> int | float:
    try:
        number = kind(value)
    except ValueError:
        raise ValueError(f"fault item {key!r} needs a number, got {value!r}") from None
    if number < 0:
        raise ValueError(f"fault item {key!r} must be >= 0")
    return number


def _validate(values: dict[str, Any]) -> None:
    status = values.get("status")
    if status is not None and not 100 <= status <= 599:
        raise ValueError("status must be an HTTP status code")
    redirect = values.get("redirect")
    if redirect is not None and redirect not in (301, 302, 303, 307, 308):
        raise ValueError("redirect must be one of 301, 302, 303, 307, 308")
    if "stall_after_chunks" in values and "stall_ms" not in values:
        raise ValueError("stall_after_chunks needs stall_ms")


@dataclass(frozen=True, slots=True, kw_only=True)
class FaultMatch:
    """Which requests a scripted fault applies to; unset fields match anything."""

    path: str | None = None
    method: str | None = None
    model: str | None = None
    stream: bool | None = None

    def matches(self, *, path: str, method: str, model: str | None, stream: bool) -> bool:
        if self.path is not None and not _path_matches(self.path, path):
            return False
        if self.method is not None and self.method.upper() != method.upper():
            return False
        if self.model is not None and self.model != model:
            return False
        return self.stream is None or self.stream == stream


def _path_matches(pattern: str, path: str) -> bool:
    """Exact match, or prefix match when the pattern ends with `*`."""
    if pattern.endswith("*"):
        return path.startswith(pattern[:-1])
    return pattern == path


@dataclass(slots=True, kw_only=True)
class ScriptedFault:
    """One FIFO entry: `times` remaining uses (-1 = forever)."""

    spec: FaultSpec
    raw: str
    times: int = 1
    match: FaultMatch = field(default_factory=FaultMatch)
    for_s: float | None = None  # "down for T, then healthy": the entry expires T s after it was queued
    expires_at: float | None = None  # set by FaultQueue.extend from for_s

    def to_json(self) -> dict[str, Any]:
        m = self.match
        match = {
            k: v
            for k, v in (("path", m.path), ("method", m.method), ("model", m.model), ("stream", m.stream))
            if v is not None
        }
        out: dict[str, Any] = {"fault": self.raw, "times": self.times, "match": match}
        if self.for_s is not None:
            out["for_s"] = self.for_s
        return out


def scripted_fault_from_json(obj: Any) -> ScriptedFault:
    """Validate one `/_mock/faults` entry; raises ValueError/TypeError with a readable reason."""
    if not isinstance(obj, dict) or not isinstance(obj.get("fault"), str):
        raise TypeError("each fault needs a string 'fault' spec")
    unknown = set(obj) - {"fault", "times", "match", "for_s"}
    if unknown:
        raise ValueError(f"unknown fault entry keys: {sorted(unknown)}")
    times = obj.get("times", 1)
    if not isinstance(times, int) or isinstance(times, bool) or (times < 1 and times != -1):
        raise ValueError("'times' must be a positive integer or -1")
    match_obj = obj.get("match") or {}
    if not isinstance(match_obj, dict) or set(match_obj) - {"path", "method", "model", "stream"}:
        raise ValueError("'match' may only contain path, method, model, stream")
    for key, value in match_obj.items():
        expected = bool if key == "stream" else str
        if value is not None and not isinstance(value, expected):
            raise TypeError(f"match.{key} must be a {expected.__name__}")
    for_s = obj.get("for_s")
    if for_s is not None and (isinstance(for_s, bool) or not isinstance(for_s, int | float) or for_s <= 0):
        raise ValueError("'for_s' must be a positive number of seconds")
    return ScriptedFault(
        spec=parse_fault_spec(obj["fault"]), raw=obj["fault"], times=times, match=FaultMatch(**match_obj),
        for_s=None if for_s is None else float(for_s),
    )


class FaultQueue:
    """FIFO of scripted faults; the first entry matching a request is consumed once."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._entries: list[ScriptedFault] = []
        self._clock = clock

    def extend(self, entries: list[ScriptedFault]) -> None:
        now = self._clock()
        for entry in entries:
            if entry.for_s is not None:
                entry.expires_at = now + entry.for_s
        self._entries.extend(entries)

    def _expire(self) -> None:
        now = self._clock()
        self._entries = [e for e in self._entries if e.expires_at is None or now < e.expires_at]

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        self._expire()
        return len(self._entries)

    def snapshot(self) -> list[dict[str, Any]]:
        self._expire()
        return [entry.to_json() for entry in self._entries]

    def take(self, *, path: str, method: str, model: str | None, stream: bool) -> FaultSpec | None:
        self._expire()
        for i, entry in enumerate(self._entries):
            if entry.match.matches(path=path, method=method, model=model, stream=stream):
                if entry.times > 0:
                    entry.times -= 1
                    if entry.times == 0:
                        del self._entries[i]
                return entry.spec
        return None
