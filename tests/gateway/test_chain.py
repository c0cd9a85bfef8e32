"""The onion composes outermost-first and policies can short-circuit."""
from __future__ import annotations

from dataclasses import dataclass, field

from gateway.body import OneChunk
from gateway.chain import Next, build_chain
from gateway.exchange import Exchange, UpstreamResponse


@dataclass
class Recorder:
    name: str
    log: list[str] = field(default_factory=list)
    answer: bool = False

    async def __call__(self, ex: Exchange, next: Next) -> UpstreamResponse:
        self.log.append(f"in:{self.name}")
        if self.answer:
            return UpstreamResponse(200, {}, OneChunk(b"local"), source="local")
        resp = await next(ex)
        self.log.append(f"out:{self.name}")
        return resp


async def test_order_and_short_circuit(make_exchange) -> None:  # type: ignore[no-untyped-def]
    """Policies run outermost first; one that answers stops the inner ones and the terminal."""
    log: list[str] = []

    async def terminal(ex: Exchange) -> UpstreamResponse:
        log.append("terminal")
        return UpstreamResponse(200, {}, OneChunk(b"up"))

    outer, inner = Recorder("outer", log), Recorder("inner", log)
    await build_chain([outer, inner], terminal)(make_exchange())
    assert log == ["in:outer", "in:inner", "terminal", "out:inner", "out:outer"]
    log.clear()
    inner.answer = True
    resp = await build_chain([outer, inner], terminal)(make_exchange())
    assert resp.source == "local" and log == ["in:outer", "in:inner", "out:outer"]


async def test_an_operations_chain_leaves_out_the_layers_that_do_not_act_on_it(make_exchange) -> None:  # type: ignore[no-untyped-def]
    """A layer declaring the ``operations`` it acts on is in those operations' chains and in the full chain
    (control), not in another operation's; a layer that declares nothing is in every chain."""
    log: list[str] = []

    async def terminal(ex: Exchange) -> UpstreamResponse:
        return UpstreamResponse(200, {}, OneChunk(b"up"))

    only_embeddings, everywhere = Recorder("embeddings", log), Recorder("all", log)
    only_embeddings.operations = frozenset({"embeddings"})  # type: ignore[attr-defined]
    layers = [only_embeddings, everywhere]
    await build_chain(layers, terminal, "chat")(make_exchange())
    assert log == ["in:all", "out:all"]
    log.clear()
    await build_chain(layers, terminal, "embeddings")(make_exchange())
    assert log == ["in:embeddings", "in:all", "out:all", "out:embeddings"]
    log.clear()
    await build_chain(layers, terminal)(make_exchange())
    assert log[0] == "in:embeddings" and len(log) == 4
