"""Client identity: who is calling (tenant) and which cache namespace they get.

With ``auth.mode: keys`` a request must carry one of the configured keys. Keys
are kept only as SHA-256 digests; a presented key is hashed and looked up by its
digest, so the time taken does not depend on how much of a key matched (what a
character-by-character comparison would leak). In passthrough mode everybody is the
``default`` tenant for metrics, but the cache namespace is derived from the
client's key so two clients with different provider keys never share answers.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

from multidict import CIMultiDictProxy

from gateway.config_model import AuthConfig, AuthKeyConfig
from gateway.errors import LocalReply

DEFAULT_TENANT = "default"


@dataclass(frozen=True, slots=True)
class Identity:
    tenant: str
    namespace: str
    key_hash: str  # hex sha256 of the presented key ("" when none); safe to log truncated
    key: AuthKeyConfig | None = None  # the matching configured key, in keys mode


ANONYMOUS = Identity(DEFAULT_TENANT, DEFAULT_TENANT, "")  # requests refused before auth ran; tests


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def bearer_token(headers: CIMultiDictProxy[str]) -> str:
    value = headers.get("authorization", "")
    if value[:7].lower() == "bearer ":
        return value[7:].strip()
    return headers.get("api-key", "").strip()  # Azure-style clients


class Authenticator:
    def __init__(self, cfg: AuthConfig) -> None:
        self.mode = cfg.mode
        # Only digests are kept; the configured entries are stored with their key blanked.
        self._keys: dict[str, AuthKeyConfig] = {digest(k.key): replace(k, key="") for k in cfg.keys}
        self._memo: dict[str, Identity] = {}

    @property
    def tenants(self) -> list[str]:
        return sorted({k.tenant for k in self._keys.values()} | {DEFAULT_TENANT})

    def identify(self, headers: CIMultiDictProxy[str]) -> Identity:
        token = bearer_token(headers)
        cached = self._memo.get(token)
        if cached is not None:
            return cached
        identity = self._identify(token)
        if len(self._memo) > 10000:
            self._memo.clear()
        self._memo[token] = identity
        return identity

    def _identify(self, token: str) -> Identity:
        key_hash = digest(token) if token else ""
        if self.mode == "passthrough":
            namespace = f"k:{key_hash[:32]}" if key_hash else DEFAULT_TENANT
            return Identity(DEFAULT_TENANT, namespace, key_hash)
        if not token:
            raise LocalReply(401, "Missing API key: send 'Authorization: Bearer <key>'.",
                             type="invalid_request_error", code="missing_api_key")
        found = self._keys.get(key_hash)
        if found is None:
            raise LocalReply(401, "Incorrect API key provided.", type="invalid_request_error",
                             code="invalid_api_key")
        return Identity(found.tenant, f"t:{found.tenant}", key_hash, found)
