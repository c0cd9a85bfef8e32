"""Precision and recall of the semantic cache on the labelled evaluation set, at the default threshold."""
from __future__ import annotations

import json
from pathlib import Path

from policies.cache.config import SemanticCacheConfig
from policies.cache.embedder import LocalEmbedder
from policies.cache.guards import compatible

EVAL = Path(__file__).resolve().parents[2] / "data" / "semantic_eval.jsonl"


async def evaluate(embedder: LocalEmbedder, threshold: float) -> tuple[float, float, list[str]]:
    rows = [json.loads(line) for line in EVAL.read_text().splitlines() if line.strip()]
    tp = fp = positives = 0
    wrong: list[str] = []
    for row in rows:
        vectors = await embedder.embed([row["cached"], row["query"]])
        hit = float(vectors[0] @ vectors[1]) >= threshold and compatible(row["query"], row["cached"])
        positives += row["expect"] == "hit"
        tp += hit and row["expect"] == "hit"
        if hit and row["expect"] == "miss":
            fp += 1
            wrong.append(row["query"])
    return tp / max(1, tp + fp), tp / positives, wrong


async def test_eval_set_shape() -> None:
    """The set has paraphrases that must hit and negations, entities and numbers that must miss."""
    rows = [json.loads(line) for line in EVAL.read_text().splitlines() if line.strip()]
    kinds = {r["kind"] for r in rows if r["expect"] == "miss"}
    assert {"negation", "entity", "number"} <= kinds
    assert sum(r["expect"] == "hit" for r in rows) >= 20


async def test_precision_and_recall_at_default_threshold(local_embedder: LocalEmbedder) -> None:
    """At the default threshold (0.95) no must-miss pair hits and most paraphrases do."""
    precision, recall, wrong = await evaluate(local_embedder, SemanticCacheConfig().threshold)
    print(f"semantic eval @0.95: precision={precision:.3f} recall={recall:.3f}")
    assert wrong == []
    assert precision == 1.0
    assert recall >= 0.8
