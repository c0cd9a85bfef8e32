"""Response caching: exact and semantic caches, streamed replay, single flight, embeddings.

The policies in ``policies/exact_cache.py``, ``semantic_cache.py``, ``coalesce.py``
and ``embeddings_cache.py`` are thin; the machinery lives here so that each part
(keys, canonical form, replay, stores, flights, embedder, index) can be tested alone.
"""
