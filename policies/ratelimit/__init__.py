"""Rate limits: token-accurate limits per upstream (queued) and per client key (429 at once).

``client_layer`` and ``upstream_layer`` are the onion layers; ``model`` (limits, verdicts),
``buckets`` (memory), ``redis_buckets`` (Lua, shared by replicas, local fallback), ``queue``
(waiting for quota), ``quota_learning`` (the provider's own view), ``headers`` (what clients
are told), ``runtime`` (the long-lived component), ``settle`` (estimate before, reconcile after).
"""
