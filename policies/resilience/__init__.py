"""Resilience: retries with a commit point, fallbacks, circuit breakers, retry budgets.

Layers: ``retry_layer`` (attempts, fallbacks, the stream commit point) and ``breaker_layer``.
``targets`` plans the upstreams an exchange may try; ``backoff``, ``retry_after``,
``retry_budget``, ``breaker``, ``commit`` and ``registry`` are plain objects with an injected
clock, so their unit tests never sleep.
"""
