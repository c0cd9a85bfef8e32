"""Cheap checks that veto a semantic match the embedding cannot tell apart.

Sentence embeddings put "enable X" and "disable X", "use a mutex" and "do not
use a mutex", "Python faster than Java" and "Java faster than Python" above
0.98. A semantic hit there returns a wrong answer, so after the cosine test a
candidate must also have: the same numbers, the same negations, the same
capitalised names (when both questions have some), and not be a mere reordering
of the same words. These only ever turn hits into misses.
"""
from __future__ import annotations

import hashlib
import re
from collections import Counter

TEXT_CHARS = 4096  # how much of a question the semantic index keeps for these checks
_WORD = re.compile(r"[A-Za-z0-9']+")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_NEGATIONS = frozenset({
    "not", "no", "never", "none", "nothing", "nobody", "neither", "nor", "without", "cannot", "cant", "dont",
    "doesnt", "didnt", "isnt", "arent", "wasnt", "werent", "wont", "wouldnt", "shouldnt", "couldnt", "hasnt",
    "havent", "hadnt", "mustnt", "except", "exclude", "excluding",
})
_OPPOSITES = (("enable", "disable"), ("increase", "decrease"), ("add", "remove"), ("before", "after"),
              ("min", "max"), ("minimum", "maximum"), ("encrypt", "decrypt"), ("true", "false"),
              ("on", "off"),
              ("above", "below"), ("more", "less"), ("import", "export"), ("upload", "download"),
              ("start", "stop"), ("open", "close"), ("buy", "sell"), ("win", "lose"), ("first", "last"))


def _words(text: str) -> list[str]:
    return [w.replace("'", "").lower() for w in _WORD.findall(text)]


def _negations(words: list[str]) -> Counter[str]:
    return Counter(w for w in words if w in _NEGATIONS)


def _names(text: str) -> set[str]:
    tokens = _WORD.findall(text)
    return {t.lower().removesuffix("'s") for i, t in enumerate(tokens) if i > 0 and t[:1].isupper()}


def _opposites(words: set[str]) -> set[str]:
    found = set()
    for a, b in _OPPOSITES:
        if a in words or a + "d" in words or a + "s" in words:
            found.add(a)
        if b in words or b + "d" in words or b + "s" in words:
            found.add(b)
    return found


def compatible(query: str, cached: str) -> bool:
    """False when the two questions differ in a way that changes the answer."""
    if _NUMBER.findall(query) != _NUMBER.findall(cached):
        return False
    qw, cw = _words(query), _words(cached)
    if _negations(qw) != _negations(cw):
        return False
    if qw != cw and Counter(qw) == Counter(cw):
        return False  # same words, another order: "A beats B" vs "B beats A"
    qn, cn = _names(query), _names(cached)
    if qn and cn and qn != cn:
        return False
    return _opposites(set(qw)) == _opposites(set(cw))


DIGEST_PIECE_CHARS = 64 * 1024


def question_digest(question: str) -> bytes:
    """SHA-256 of a question longer than TEXT_CHARS (the index keeps only its head), else empty.

    Encoded and hashed in pieces of ``DIGEST_PIECE_CHARS``: the same bytes as encoding the whole, but
    no multi-MB copy (a 4 MB question's was one ~3 ms call keeping the GIL, in fresh pages) and the GIL
    can go to the event loop between pieces (``hashlib`` releases it while hashing)."""
    if len(question) <= TEXT_CHARS:
        return b""
    digest = hashlib.sha256()
    for start in range(0, len(question), DIGEST_PIECE_CHARS):
        digest.update(question[start:start + DIGEST_PIECE_CHARS].encode("utf-8", "surrogatepass"))
    return digest.digest()
