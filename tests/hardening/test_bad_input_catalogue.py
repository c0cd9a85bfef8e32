"""The bad-input catalogue against one gateway: each named case gets its clean 4xx, none reaches the provider.

One gateway (``auth.mode: keys``) and one fake provider serve the whole module (a module-scoped event
loop), so 200+ cases take seconds. Framing and slow-client cases that need raw sockets are in
``test_bad_input_raw.py``; generated bodies in ``test_bad_input_property.py``.
"""
from __future__ import annotations

import orjson
import pytest
from multidict import CIMultiDict
from yarl import URL

from tests.e2e.test_bad_input import CASES as E2E_CASES
from tests.e2e.test_bad_input import Case
from tests.hardening.bad_cases import (
    KEY,
    VALID,
    auth_cases,
    json_cases,
    method_path_cases,
    model_cases,
    size_cases,
)
from tests.hardening.bad_schema_cases import schema_cases
from tests.hardening.conftest import MODULE_LOOP, Env

CATALOGUE = [
    *auth_cases(),
    *method_path_cases(),
    *size_cases(),
    *json_cases(),
    *model_cases(),
    *schema_cases(),
]


async def send(env: Env, case: Case) -> tuple[int, bytes, CIMultiDict[str]]:
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json", **case.headers}
    headers = {k: v for k, v in headers.items() if v != ""}  # "" in a case: leave that header out
    url = URL(env.gateway.url + case.path, encoded=True)  # keep //, %2F and %2e%2e as written
    async with env.session.request(case.method, url, data=case.body, headers=headers) as resp:
        return resp.status, await resp.read(), CIMultiDict(resp.headers)


def assert_openai_error(status: int, body: bytes, headers: CIMultiDict[str], case: Case) -> None:
    assert status == case.status, (case.name, status, body[:300])
    error = orjson.loads(body)["error"]
    assert set(error) >= {"message", "type", "code", "param"} and isinstance(error["message"], str)
    assert error["type"] == case.type and error["code"] == case.code, (case.name, error)
    assert headers.get("x-request-id")


def test_catalogue_has_200_distinct_named_cases() -> None:
    """The catalogue holds at least 200 cases (beyond the e2e module's), every name unique."""
    names = [c.name for c in CATALOGUE]
    assert len(names) >= 200 and len(set(names)) == len(names)
    assert not set(names) & {c.name for c in E2E_CASES}


@MODULE_LOOP
@pytest.mark.parametrize("case", CATALOGUE, ids=[c.name for c in CATALOGUE])
async def test_bad_request_gets_a_clean_4xx(env: Env, case: Case) -> None:
    """Exact status and error code in the OpenAI shape; no upstream call; no ERROR log line."""
    before, logged = env.upstream_calls(), len(env.errors.records)
    status, body, headers = await send(env, case)
    assert_openai_error(status, body, headers, case)
    assert env.upstream_calls() == before, "a bad request reached the provider"
    assert [r.getMessage() for r in env.errors.records[logged:]] == []


@MODULE_LOOP
async def test_gateway_still_serves_after_the_catalogue(env: Env) -> None:
    """After every bad request the same gateway answers a valid one normally."""
    status, body, _ = await send(env, Case("valid", VALID, 200))
    assert status == 200 and orjson.loads(body)["choices"]
    assert env.upstream_calls() == 1
