"""Token costs of messages during one compression, each string counted once.

The compressor builds several candidate conversations (after each step, and
for each cut the pruner tries) that share most of their message objects. The
meter caches the cost of each message object by identity for the duration of
one call, so a candidate costs one dict lookup per unchanged message; the
strings themselves are memoised by the tokenizer across requests. Texts the
compressor made itself and already counted (truncated tool outputs) are
``learn``-ed, so they are never tokenized twice.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from gateway.tokens.request import REPLY_PRIMING_TOKENS, CountFn, count_messages
from policies.compression.turns import Message

CountMessagesFn = Callable[[Sequence[Message]], int]


class Meter:
    """Counts like ``Tokenizer.count_request`` for chat: messages plus ``fixed``
    (tool definitions), so its totals match ``gateway.tokens.prompt.prompt_tokens``."""

    __slots__ = ("_costs", "_count", "_count_messages", "_known", "fixed")

    def __init__(
        self, count: CountFn, fixed: int = 0, count_messages_fn: CountMessagesFn | None = None
    ) -> None:
        """``count`` counts one string; ``count_messages_fn`` (default: OpenAI's formula over
        ``count``) lets the tokenizer resolve the model's encoding once per message, not per string."""
        self._count = count
        self.fixed = fixed
        self._count_messages = count_messages_fn or partial(count_messages, count)
        self._known: dict[str, int] = {}
        # id -> (message, cost): holding the message keeps its id from being reused
        self._costs: dict[int, tuple[Message, int]] = {}

    def text(self, text: str) -> int:
        """Tokens of one string."""
        known = self._known.get(text)
        return self._count(text) if known is None else known

    def learn(self, text: str, tokens: int) -> None:
        """Record the count of a text the caller built and already counted."""
        self._known[text] = tokens

    def cost(self, message: Message) -> int:
        """Tokens of one message by OpenAI's formula (without the reply priming)."""
        hit = self._costs.get(id(message))
        if hit is not None and hit[0] is message:
            return hit[1]
        content = message.get("content")
        known = self._known.get(content) if type(content) is str else None
        if known is None:
            cost = self._count_messages([message]) - REPLY_PRIMING_TOKENS
        else:
            rest = {k: v for k, v in message.items() if k != "content"}
            cost = self._count_messages([rest]) - REPLY_PRIMING_TOKENS + known
        self._costs[id(message)] = (message, cost)
        return cost

    def span(self, messages: Sequence[Message], start: int, end: int) -> int:
        cost = self.cost
        return sum(cost(messages[i]) for i in range(start, end))

    def total(self, messages: Sequence[Message]) -> int:
        """Prompt tokens of a request whose messages are ``messages``."""
        if not messages:
            return self.fixed
        cost = self.cost
        return self.fixed + REPLY_PRIMING_TOKENS + sum(cost(m) for m in messages)


def tokenizer_meter(tokenizer: Any, model: str, fixed: int = 0) -> Meter:
    """A meter over ``gateway.tokens.tokenizer.Tokenizer`` (its per-string memo outlives the request)."""
    return Meter(partial(tokenizer.count_text, model), fixed, partial(tokenizer.count_messages, model))
