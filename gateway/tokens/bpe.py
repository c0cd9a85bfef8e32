"""Offline loading of tiktoken BPE encodings from files shipped with the gateway.

tiktoken downloads its BPE rank files from ``openaipublic.blob.core.windows.net`` on
first use and caches them in a temp dir. A gateway must start and count tokens on
machines with no outbound internet (air-gapped clusters, locked-down sidecars), and
must not depend on whatever happens to sit in ``/tmp``. So the two encodings used by
current OpenAI models are shipped as package data under ``gateway/data/tiktoken/``
(see the README there for origin, licence and hashes), verified by sha256 when
loaded, and turned into :class:`tiktoken.Encoding` objects without touching the
network or tiktoken's cache directory.

The split regex and special tokens are taken from ``tiktoken_ext.openai_public``
itself rather than copied, so they cannot drift from the installed tiktoken.
"""

from __future__ import annotations

import binascii
import hashlib
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import tiktoken

__all__ = [
    "BPE_FILES",
    "BpeFile",
    "BpeFileError",
    "build_encoding",
    "load_encoding",
    "parse_mergeable_ranks",
    "read_bpe_file",
]


class BpeFileError(RuntimeError):
    """A shipped BPE file is missing, corrupt, or disagrees with the installed tiktoken."""


@dataclass(frozen=True, slots=True)
class BpeFile:
    """A BPE rank file shipped as package data, pinned by its sha256."""

    encoding: str
    filename: str
    sha256: str


# The sha256 values are the ``expected_hash`` values tiktoken itself pins in
# ``tiktoken_ext/openai_public.py``; they are checked again at load time below.
BPE_FILES: Mapping[str, BpeFile] = types.MappingProxyType(
    {
        "cl100k_base": BpeFile(
            encoding="cl100k_base",
            filename="cl100k_base.tiktoken",
            sha256="223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        ),
        "o200k_base": BpeFile(
            encoding="o200k_base",
            filename="o200k_base.tiktoken",
            sha256="446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        ),
    }
)

_DATA_PACKAGE = "gateway"
_DATA_DIR = ("data", "tiktoken")


def _spec(encoding: str) -> BpeFile:
    """Look up a shipped encoding, failing with the list of what is available."""
    try:
        return BPE_FILES[encoding]
    except KeyError:
        known = ", ".join(sorted(BPE_FILES))
        raise BpeFileError(f"no shipped BPE file for encoding {encoding!r} (available: {known})") from None


def read_bpe_file(encoding: str) -> bytes:
    """Read the raw bytes of a shipped BPE file via importlib.resources.

    importlib.resources (not ``__file__`` arithmetic) keeps this working when the
    gateway is installed as a wheel, zipapp or frozen bundle.
    """
    spec = _spec(encoding)
    resource = resources.files(_DATA_PACKAGE).joinpath(*_DATA_DIR, spec.filename)
    try:
        return resource.read_bytes()
    except OSError as exc:
        raise BpeFileError(
            f"cannot read shipped BPE file for {encoding!r} at {resource}: {exc}; "
            "the gateway package data is incomplete (was it installed without package data?)"
        ) from exc


def _verify_sha256(spec: BpeFile, data: bytes) -> None:
    """Refuse a truncated or tampered file: wrong ranks would silently give wrong counts."""
    actual = hashlib.sha256(data).hexdigest()
    if actual != spec.sha256:
        raise BpeFileError(
            f"sha256 mismatch for BPE file {spec.filename!r} ({spec.encoding}): "
            f"expected {spec.sha256}, got {actual}. The file is corrupt or was replaced; "
            "restore it from gateway/data/tiktoken (see README.md there)."
        )


def parse_mergeable_ranks(data: bytes) -> dict[bytes, int]:
    """Parse tiktoken's format: one ``<base64 token> <rank>`` pair per line.

    Splitting the whole file once and decoding with ``binascii`` directly is ~1.6x
    faster than tiktoken's per-line ``base64.b64decode`` loop, which matters because
    this runs at gateway start-up. Input is sha256-verified first, so no strict base64.
    """
    fields = data.split()
    if len(fields) % 2:
        raise BpeFileError("malformed BPE file: odd number of fields (expected 'token rank' pairs)")
    tokens = map(binascii.a2b_base64, fields[0::2])
    ranks = dict(zip(tokens, map(int, fields[1::2]), strict=True))
    if len(ranks) != len(fields) // 2:
        raise BpeFileError("malformed BPE file: duplicate tokens")
    return ranks


def _tiktoken_params(encoding: str, ranks_loader: Callable[..., dict[bytes, int]]) -> dict[str, Any]:
    """Run tiktoken's own constructor for ``encoding`` with a local rank loader.

    ``tiktoken_ext.openai_public.cl100k_base()`` etc. build the regex and special
    tokens inline and fetch ranks through the module-global ``load_tiktoken_bpe``.
    Re-binding a copy of the function to a copy of its globals (nothing shared is
    mutated, so this is safe under threads) reuses tiktoken's definitions verbatim
    while ``ranks_loader`` serves the shipped file instead of the URL.
    """
    from tiktoken_ext import openai_public  # noqa: PLC0415 - tiktoken only once an encoding loads

    constructor = openai_public.ENCODING_CONSTRUCTORS.get(encoding)
    if not isinstance(constructor, types.FunctionType):
        raise BpeFileError(f"installed tiktoken has no constructor for {encoding!r}")
    scoped_globals = {**constructor.__globals__, "load_tiktoken_bpe": ranks_loader}
    rebound = types.FunctionType(
        constructor.__code__,
        scoped_globals,
        constructor.__name__,
        constructor.__defaults__,
        constructor.__closure__,
    )
    params: dict[str, Any] = rebound()
    return params


def build_encoding(encoding: str, data: bytes) -> tiktoken.Encoding:
    """Build a :class:`tiktoken.Encoding` from the bytes of a BPE file, fully offline.

    Checks the bytes against the gateway's pinned sha256 and checks that the installed
    tiktoken pins the same hash, so a tiktoken upgrade that changes an encoding fails
    loudly instead of counting with stale ranks.
    """
    spec = _spec(encoding)
    _verify_sha256(spec, data)

    def ranks_loader(blobpath: str, expected_hash: str | None = None) -> dict[bytes, int]:
        if not blobpath.endswith("/" + spec.filename):
            raise BpeFileError(f"tiktoken's {encoding} constructor asked for unexpected file {blobpath!r}")
        if expected_hash is not None and expected_hash != spec.sha256:
            raise BpeFileError(
                f"installed tiktoken expects sha256 {expected_hash} for {spec.filename}, but the "
                f"gateway ships {spec.sha256}; update gateway/data/tiktoken to match tiktoken"
            )
        return parse_mergeable_ranks(data)

    import tiktoken  # noqa: PLC0415 - a gateway that never counts never imports it (~1.4 MB)

    params = _tiktoken_params(encoding, ranks_loader)
    extra = {"explicit_n_vocab": params["explicit_n_vocab"]} if "explicit_n_vocab" in params else {}
    return tiktoken.Encoding(
        name=params["name"],
        pat_str=params["pat_str"],
        mergeable_ranks=params["mergeable_ranks"],
        special_tokens=params["special_tokens"],
        **extra,
    )


def load_encoding(encoding: str) -> tiktoken.Encoding:
    """Load a shipped encoding (``"cl100k_base"`` or ``"o200k_base"``) without network access."""
    return build_encoding(encoding, read_bpe_file(encoding))
