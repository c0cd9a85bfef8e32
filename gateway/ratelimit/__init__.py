"""Admission control: token-accurate rate limits per upstream and per client key.

``model`` (limits, verdicts), ``buckets`` (memory), ``redis_buckets`` (Lua,
shared by replicas, local fallback), ``queue`` (waiting for an upstream's
quota), ``quota_learning`` (the provider's own view), ``headers`` (what
clients are told), ``runtime`` (the long-lived component), ``settle``
(estimate before, reconcile after). The policies are
``policies/rate_limit_client.py`` and ``policies/rate_limit_upstream.py``.
"""
