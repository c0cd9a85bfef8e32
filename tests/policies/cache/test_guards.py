"""Semantic guards veto matches that differ in numbers, negation, names, opposites or word order."""
from __future__ import annotations

import pytest

from policies.cache.guards import compatible


@pytest.mark.parametrize("a,b", [
    ("What is 15% of 200?", "What is 25% of 200?"),
    ("Should I use a mutex?", "Should I not use a mutex?"),
    ("Why should I use Go?", "Why shouldn't I use Go?"),
    ("Is Python faster than Java?", "Is Java faster than Python?"),
    ("Weather in Paris in June", "Weather in Rome in June"),
    ("How do I enable 2FA", "How do I disable 2FA"),
])
def test_vetoes(a: str, b: str) -> None:
    """Each pair would be a wrong answer, so it is vetoed."""
    assert not compatible(a, b)


@pytest.mark.parametrize("a,b", [
    ("How do I reverse a list in Python?", "How can I reverse a Python list?"),
    ("Summarize the history of Rome", "Give me a summary of Rome's history"),
    ("what is python", "What is Python?"),
])
def test_paraphrases_pass(a: str, b: str) -> None:
    """Real paraphrases are left alone."""
    assert compatible(a, b)
