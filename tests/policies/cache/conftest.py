"""Shared fixtures of the cache tests: one local embedder per test session (it takes ~1 s to load)."""
from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from policies.cache.embedder import LocalEmbedder


@pytest.fixture(scope="session")
def local_embedder() -> Iterator[LocalEmbedder]:
    embedder = LocalEmbedder()
    asyncio.run(embedder.load())
    yield embedder
    asyncio.run(embedder.close())
