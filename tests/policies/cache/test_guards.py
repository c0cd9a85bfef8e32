"""Semantic guards veto matches that differ in numbers, negation, names, opposites or word order."""
from __future__ import annotations

import hashlib

import pytest

from policies.cache.guards import DIGEST_PIECE_CHARS, compatible, question_digest


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


def test_a_long_question_is_hashed_in_pieces_as_a_whole() -> None:
    """The digest encodes and hashes 64 Ki-character pieces: the same bytes as the whole question, with
    a multi-byte character and a lone surrogate (a client's ``\\ud800``) at a piece's edge."""
    edge = DIGEST_PIECE_CHARS
    for question in ("a" * (edge - 1) + "é€" + "b" * edge, "x" * (edge - 1) + "\ud800\udc00" + "y" * 10,
                     "why " * 50_000):
        whole = hashlib.sha256(question.encode("utf-8", "surrogatepass")).digest()
        assert question_digest(question) == whole
    assert question_digest("short question") == b""  # control: the index keeps a short one whole
