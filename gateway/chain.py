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


def build_chain(policies: Sequence[Policy], terminal: Next) -> Next:
    """Compose outermost-first ``policies`` around ``terminal`` once, at start-up."""
    call = terminal
    for policy in reversed(policies):
        call = _bind(policy, call)
    return call


def _bind(policy: Policy, inner: Next) -> Next:
    # partial, not a wrapper coroutine: one frame less per layer on the hot path
    return partial(policy.__call__, next=inner)
