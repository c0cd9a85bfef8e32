"""The policy onion: ``Policy`` and ``Next`` and the function that composes them."""
from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Protocol

from gateway.exchange import Exchange, UpstreamResponse

Next = Callable[[Exchange], Awaitable[UpstreamResponse]]


class Policy(Protocol):
    """One layer of the onion.

    A policy may answer at once (return a response or raise ``LocalReply``),
    wrap the call to ``next`` (retry, breaker), change the request
    (``ex.set_body``), or wrap ``resp.body`` to observe or transform the stream.
    It must never pre-read a streamed body.
    """

    name: str

    async def __call__(self, ex: Exchange, next: Next) -> UpstreamResponse: ...


def build_chain(policies: Sequence[Policy], terminal: Next, operation: str | None = None) -> Next:
    """Compose outermost-first ``policies`` around ``terminal`` once, at start-up. With ``operation``, the
    chain of that operation only: a layer that declares the ``operations`` it acts on (a frozenset class
    attribute) and leaves every other request untouched is left out of the others' chains, instead of being
    entered and passing the request on (a coroutine per request and layer, issue 21)."""
    call = terminal
    for policy in reversed(policies):
        if operation is None or serves(policy, operation):
            call = _bind(policy, call)
    return call


def serves(policy: Policy, operation: str) -> bool:
    """Whether ``policy`` acts on requests of ``operation`` (a layer that declares nothing acts on all)."""
    operations: frozenset[str] | None = getattr(policy, "operations", None)
    return operations is None or operation in operations


def _bind(policy: Policy, inner: Next) -> Next:
    # partial, not a wrapper coroutine: one frame less per layer on the hot path
    return partial(policy.__call__, next=inner)
