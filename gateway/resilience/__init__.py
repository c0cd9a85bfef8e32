"""Resilience building blocks: backoff, Retry-After parsing, retry budgets, circuit
breakers and the stream commit point. The policies in ``policies/retry.py`` and
``policies/circuit_breaker.py`` and the tool routes (``gateway/tools.py``) compose
them; everything here is plain objects with an injected clock, so unit tests never
sleep.
"""
