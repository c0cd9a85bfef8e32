"""Response caching: exact and semantic caches, streamed replay, single flight, embeddings.

Layers: ``exact_layer``, ``embeddings_layer``, ``semantic_layer``, ``coalesce_layer``. The
machinery (keys, canonical form, replay, stores, flights, embedder, index) is one module each.
"""
