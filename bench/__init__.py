"""The project's benchmark harness: ``make bench`` (``python -m bench.overhead``).

Benchmarks are measurements, never tests: they run on demand and write their
figures to ``bench/results/<date>.md``.
"""
