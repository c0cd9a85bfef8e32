"""Client identity: keys mode rejects unknown keys; passthrough namespaces by key hash."""
from __future__ import annotations

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.auth import Authenticator
from gateway.config_model import AuthConfig, AuthKeyConfig
from gateway.errors import LocalReply


def _h(auth: str | None) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict({"Authorization": auth} if auth else {}))


def test_keys_mode() -> None:
    """A configured key maps to its tenant; missing or wrong keys get 401."""
    auth = Authenticator(AuthConfig(mode="keys", keys=[AuthKeyConfig(key="k-a", tenant="team-a")]))
    assert auth.identify(_h("Bearer k-a")).tenant == "team-a"
    for bad in (None, "Bearer nope", "Basic k-a"):
        with pytest.raises(LocalReply) as err:
            auth.identify(_h(bad))
        assert err.value.status == 401
    assert "k-a" not in repr(auth._keys)  # stored hashed


def test_passthrough_namespaces_differ_per_client_key() -> None:
    """Two clients with different provider keys never share a cache namespace; tenant stays bounded."""
    auth = Authenticator(AuthConfig())
    a, b = auth.identify(_h("Bearer sk-1")), auth.identify(_h("Bearer sk-2"))
    assert a.tenant == b.tenant == "default"
    assert a.namespace != b.namespace and "sk-1" not in a.namespace
