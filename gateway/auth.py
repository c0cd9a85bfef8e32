"""Client identity: who is calling (tenant) and which cache namespace they get.

With ``auth.mode: keys`` a request must carry one of the configured keys (``Authorization: Bearer``
or ``api-key``). Keys are kept only as SHA-256 digests; a presented key is hashed and
looked up by its digest, so the time taken does not depend on how much of a key matched.

In passthrough mode everybody is the ``default`` tenant for metrics, but the cache namespace is
derived from *every* credential the provider could accept: ``Authorization`` of any scheme
(``Bearer``, ``Basic``, ``Token``, odd whitespace...), ``x-api-key``, ``api-key`` and the query
parameters providers read keys from (``key``, ``api_key``...). Two clients with different
credentials never share answers, and a request with no credential at all gets its own anonymous
namespace (``anon``), never one shared with keyed clients. Only digests are remembered: the memo
is keyed by the credential's hash and bounded in bytes.
"""
from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, replace

from multidict import CIMultiDictProxy

from gateway.config_model import AuthConfig, AuthKeyConfig
from gateway.errors import LocalReply

DEFAULT_TENANT = "default"
ANONYMOUS_NAMESPACE = "anon"
CREDENTIAL_HEADERS = ("authorization", "x-api-key", "api-key")
# Query parameters a provider may read a key from (Gemini ``key``, some proxies ``api_key``...).
CREDENTIAL_QUERY = frozenset({"key", "api_key", "api-key", "apikey", "access_token", "token"})
MEMO_MAX_BYTES = 1 << 20
_MEMO_ENTRY_OVERHEAD = 200  # dict slot, the Identity object, its strings' headers


@dataclass(frozen=True, slots=True)
class Identity:
    tenant: str
    namespace: str
    key_hash: str  # hex sha256 of the presented credential ("" when none); safe to log truncated
    key: AuthKeyConfig | None = None  # the matching configured key, in keys mode


ANONYMOUS = Identity(DEFAULT_TENANT, DEFAULT_TENANT, "")  # requests refused before auth ran; tests


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def bearer_token(headers: CIMultiDictProxy[str]) -> str:
    """The gateway key of keys mode: ``Bearer`` (any whitespace after it), else ``api-key`` (Azure style)."""
    parts = headers.get("authorization", "").split(None, 1)
    if len(parts) == 2 and parts[0].lower() == "bearer":
        return parts[1].strip()
    return headers.get("api-key", "").strip()


def credential_material(headers: CIMultiDictProxy[str], query: Mapping[str, str] | None) -> str:
    """Every credential a provider could accept, in one canonical string ("" when there is none)."""
    parts = [
        f"{name}\x00{v.strip()}" for name in CREDENTIAL_HEADERS for v in headers.getall(name, ()) if v.strip()
    ]
    if query:
        parts += [f"?{name}\x00{v}" for name, v in query.items() if name.lower() in CREDENTIAL_QUERY and v]
    return "\x01".join(parts)


class Authenticator:
    def __init__(self, cfg: AuthConfig) -> None:
        self.mode = cfg.mode
        # Only digests are kept; the configured entries are stored with their key blanked.
        self._keys: dict[str, AuthKeyConfig] = {digest(k.key): replace(k, key="") for k in cfg.keys}
        self._memo: dict[str, Identity] = {}  # credential digest -> identity
        self._memo_bytes = 0

    @property
    def tenants(self) -> list[str]:
        return sorted({k.tenant for k in self._keys.values()} | {DEFAULT_TENANT})

    def identify(self, headers: CIMultiDictProxy[str], query: Mapping[str, str] | None = None) -> Identity:
        token = bearer_token(headers) if self.mode == "keys" else credential_material(headers, query)
        key_hash = digest(token) if token else ""
        cached = self._memo.get(key_hash)
        if cached is not None:
            return cached
        identity = self._identify(key_hash)
        size = len(key_hash) + len(identity.namespace) + len(identity.tenant) + _MEMO_ENTRY_OVERHEAD
        if self._memo_bytes + size > MEMO_MAX_BYTES:
            self._memo.clear()
            self._memo_bytes = 0
        self._memo[key_hash] = identity
        self._memo_bytes += size
        return identity

    def _identify(self, key_hash: str) -> Identity:
        if self.mode == "passthrough":
            namespace = f"k:{key_hash[:32]}" if key_hash else ANONYMOUS_NAMESPACE
            return Identity(DEFAULT_TENANT, namespace, key_hash)
        if not key_hash:
            raise LocalReply(
                401,
                "Missing API key: send 'Authorization: Bearer <key>'.",
                type="invalid_request_error",
                code="missing_api_key",
            )
        found = self._keys.get(key_hash)
        if found is None:
            raise LocalReply(
                401, "Incorrect API key provided.", type="invalid_request_error", code="invalid_api_key"
            )
        return Identity(found.tenant, f"t:{found.tenant}", key_hash, found)
