"""Routing across deployments of one model (issue 18): least in-flight with a latency EWMA, power of two.

A route with ``targets: [{upstream, model, weight}]`` has several deployments of the same
model. Per request, ``order`` picks two deployments at random (by weight) among those whose
breaker admits traffic and keeps the one with the lower ``(in_flight + 1) x EWMA of time to
first token``; the others follow by the same score (they are where a failure moves on to), and
open breakers go last. With ``affinity: prefix`` the first pick is instead the rendezvous-hash
winner of the prompt's first ``PREFIX_CHARS`` characters among the admitting deployments, so
requests sharing a long prefix stay where the provider's prompt cache is warm.

``Load`` is one deployment's live figures, kept in ``Resilience.loads`` (long-lived, per
upstream key): ``begin``/``end`` around every attempt of a balanced target (the end of a
committed answer is the end of its body), ``observe`` with each time to first token.
"""
from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

EWMA_ALPHA = 0.3
PREFIX_CHARS = 2048


@dataclass(slots=True)
class Load:
    in_flight: int = 0
    ewma_s: float = 0.0  # 0: nothing seen yet (scores by in-flight alone)

    def begin(self) -> None:
        self.in_flight += 1

    def end(self) -> None:
        self.in_flight = max(0, self.in_flight - 1)

    def observe(self, seconds: float) -> None:
        self.ewma_s = seconds if self.ewma_s == 0.0 else (1 - EWMA_ALPHA) * self.ewma_s + EWMA_ALPHA * seconds

    def score(self, floor_s: float) -> float:
        return (self.in_flight + 1) * max(self.ewma_s, floor_s)


@dataclass(frozen=True, slots=True)
class Deployment:
    key: str  # the upstream name: its breaker and its Load
    weight: float


def order(deployments: Sequence[Deployment], loads: Callable[[str], Load], admits: Callable[[str], bool],
          rand: Callable[[], float] = random.random, prefix: str | None = None) -> list[int]:
    """Indexes of ``deployments``, best first: the chosen one, then by score, open breakers last."""
    open_ = [i for i, d in enumerate(deployments) if not admits(d.key)]
    live = [i for i in range(len(deployments)) if i not in open_]
    if not live:
        return list(range(len(deployments)))
    floor = min((loads(deployments[i].key).ewma_s for i in live if loads(deployments[i].key).ewma_s > 0),
                default=1.0) * 0.01
    by_score = sorted(live, key=lambda i: loads(deployments[i].key).score(floor))
    if prefix is not None:
        first = max(live, key=lambda i: _rendezvous(prefix, deployments[i]))
    elif len(live) == 1:
        first = live[0]
    else:
        a = _weighted(deployments, live, rand)
        b = _weighted(deployments, [i for i in live if i != a], rand)
        first = min((a, b), key=lambda i: loads(deployments[i].key).score(floor))
    return [first, *(i for i in by_score if i != first), *open_]


def _weighted(deployments: Sequence[Deployment], among: list[int], rand: Callable[[], float]) -> int:
    total = sum(deployments[i].weight for i in among)
    point = rand() * total
    for i in among:
        point -= deployments[i].weight
        if point < 0:
            return i
    return among[-1]


def _rendezvous(prefix: str, deployment: Deployment) -> float:
    """Weighted highest-random-weight score of (prefix, deployment)."""
    digest = hashlib.blake2b(f"{deployment.key}\0{prefix}".encode(), digest_size=8).digest()
    unit = (int.from_bytes(digest, "big") + 1) / (2 ** 64 + 1)
    return -deployment.weight / math.log(unit)


def prompt_prefix(body: dict[str, Any] | None) -> str:
    """The first ``PREFIX_CHARS`` characters of the prompt (messages' text, or the Responses input)."""
    if body is None:
        return ""
    parts: list[str] = []
    size = 0
    for message in body.get("messages") or ():
        content = message.get("content") if isinstance(message, dict) else None
        text = content if isinstance(content, str) else str(content)
        parts.append(text)
        size += len(text)
        if size >= PREFIX_CHARS:
            break
    if not parts and isinstance(body.get("input"), str):
        parts.append(body["input"])
    return "\n".join(parts)[:PREFIX_CHARS]
