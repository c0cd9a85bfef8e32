"""Tenant tags on provider objects created through the gateway (keys mode).

The provider sees one account (the gateway's key), so its stored objects (files, batches, stored
responses, vector stores...) are shared by every tenant. Each object created through the gateway is
tagged with its tenant: the ``id`` of a successful POST answer on a stateful endpoint, and the id of
every ``/v1/responses`` answer. A path naming an object id, or a ``previous_response_id``, must name an
object of the caller's tenant (else 404, as if it did not exist); collection listings keep only the
caller's objects. Tags live in Redis when a state backend is configured (key names hold the id's
SHA-256 only), and in this process otherwise.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import re

import orjson

from gateway.appstate import AppState
from gateway.body import Body, Observed
from gateway.errors import LocalReply
from gateway.exchange import StateKey

log = logging.getLogger("gateway.ownership")
ID_PREFIXES = (
    "file-",
    "batch_",
    "resp_",
    "vs_",
    "vsfb_",
    "ftjob-",
    "ftckpt_",
    "ft-",
    "asst_",
    "thread_",
    "msg_",
    "run_",
    "step_",
    "conv_",
    "cntr_",
    "upload_",
    "part_",
    "eval_",
    "evalrun_",
)
TAG_TTL_S = 30 * 86400
MAX_LOCAL = 100_000
CAPTURE_BYTES = 64 * 1024
_RESPONSE_ID = re.compile(rb'"id"\s*:\s*"(resp_[A-Za-z0-9_\-]{1,200})"')


class Owners:
    def __init__(self) -> None:
        self.local: dict[str, str] = {}  # object id -> tenant
        self.tasks: set[asyncio.Task[None]] = set()

    @staticmethod
    def _key(st: AppState, oid: str) -> str:
        return f"{st.config.state.key_prefix}own:{hashlib.sha256(oid.encode()).hexdigest()[:40]}"

    async def owner(self, st: AppState, oid: str) -> str | None:
        found = self.local.get(oid)
        if found is None and st.backend is not None:
            try:
                raw = await st.backend.call(lambda r: r.get(self._key(st, oid)))
            except Exception:  # noqa: BLE001 - Redis down: unknown owner, refused
                return None
            found = raw.decode() if isinstance(raw, bytes) else raw
        return found

    def tag(self, st: AppState, oid: str, tenant: str) -> None:
        """Known here at once; shared through Redis (when configured) a moment later."""
        if len(self.local) >= MAX_LOCAL:
            self.local.clear()
        self.local[oid] = tenant
        st.metrics.decision("ownership", "tagged")
        if st.backend is not None:
            task = asyncio.get_running_loop().create_task(self._share(st, oid, tenant))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _share(self, st: AppState, oid: str, tenant: str) -> None:
        assert st.backend is not None
        try:
            await st.backend.call(lambda r: r.set(self._key(st, oid), tenant, ex=TAG_TTL_S))
        except Exception as exc:  # noqa: BLE001 - Redis down: this process still knows the tag
            log.warning("object tag not shared", extra={"fields": {"error": type(exc).__name__}})


OWNERS: StateKey[Owners] = StateKey("ownership.owners")


def owners_of(st: AppState) -> Owners:
    return st.components.ensure(OWNERS, Owners)


def object_ids(path: str) -> list[str]:
    """Object ids named in a ``/v1/{family}/...`` path."""
    return [seg for seg in path.split("/")[3:] if seg.startswith(ID_PREFIXES)]


async def require_owned(st: AppState, tenant: str, ids: list[str]) -> None:
    owners = owners_of(st)
    for oid in ids:
        if await owners.owner(st, oid) != tenant:
            st.metrics.decision("ownership", "refused_other_tenant")
            raise LocalReply(404, f"No such object: '{oid[:64]}'.", code="not_found")


async def filter_listing(st: AppState, tenant: str, data: bytes) -> bytes:
    """A collection answer with only the caller's objects in ``data``."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return b'{"object":"list","data":[]}'
    items = obj.get("data") if isinstance(obj, dict) else None
    if not isinstance(items, list):
        return b'{"object":"list","data":[]}'
    owners = owners_of(st)
    kept = [
        i
        for i in items
        if isinstance(i, dict) and isinstance(i.get("id"), str) and await owners.owner(st, i["id"]) == tenant
    ]
    st.metrics.decision("ownership", "listing_filtered")
    return orjson.dumps(
        {
            **obj,
            "data": kept,
            "first_id": kept[0]["id"] if kept else None,
            "last_id": kept[-1]["id"] if kept else None,
        }
    )


def tag_created_id(st: AppState, tenant: str, data: bytes) -> None:
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return
    if isinstance(obj, dict) and isinstance(obj.get("id"), str):
        owners_of(st).tag(st, obj["id"], tenant)


def tag_response_body(st: AppState, tenant: str, body: Body) -> Body:
    """Tag the id of a ``/v1/responses`` answer (JSON or SSE) once it ended cleanly."""
    head = bytearray()

    def keep(chunk: bytes) -> bytes:
        if len(head) < CAPTURE_BYTES:
            head.extend(chunk[: CAPTURE_BYTES - len(head)])
        return chunk

    def on_end(error: BaseException | None) -> None:
        found = _RESPONSE_ID.search(bytes(head))
        if error is None and found is not None:
            owners_of(st).tag(st, found.group(1).decode(), tenant)

    return Observed(body, on_chunk=keep, on_end=on_end)
