"""Prompt-cache hits across deployments, with and without ``affinity: prefix``.

Two fake-provider instances (two deployments, each with its own prompt cache:
``MockConfig.prompt_cache_min_tokens``) behind one route with ``targets``. A workload of agents,
each with its own long system prompt and a growing conversation, sends its turns in random
order, a few at a time. Figure: the share of prompt tokens the providers reported as cached
(``usage.prompt_tokens_details.cached_tokens``), balanced by load only vs. with prefix affinity.

    python -m bench.affinity                   # 12 agents x 15 turns, 4 in flight
"""
from __future__ import annotations

import argparse
import asyncio
import random
from typing import Any

from openai import AsyncOpenAI

from gateway.mock import MockConfig, start_mock
from tests.support.servers import gateway_config, start_gateway


def conversations(agents: int, turns: int, rng: random.Random) -> list[list[dict[str, Any]]]:
    """Each agent's successive prompts (system + the turns so far), interleaved at random."""
    prompts: list[list[dict[str, Any]]] = []
    order: list[tuple[int, int]] = [(a, t) for a in range(agents) for t in range(turns)]
    rng.shuffle(order)
    order.sort(key=lambda at: at[1])  # every agent's turn t before its turn t + 1, agents mixed
    for agent, turn in order:
        system = {"role": "system", "content": f"Agent {agent}. " + "Follow the runbook carefully. " * 200}
        history: list[dict[str, Any]] = [system]
        for t in range(turn):
            history += [{"role": "user", "content": f"step {t}"},  # a tool result: what makes histories long
                        {"role": "assistant", "content": f"done {t}: " + f"observation {agent}.{t} " * 120}]
        prompts.append([*history, {"role": "user", "content": f"step {turn}"}])
    return prompts


async def one_run(affinity: str, prompts: list[list[dict[str, Any]]], in_flight: int) -> str:
    mocks = [await start_mock(MockConfig(prompt_cache_min_tokens=1024)) for _ in range(2)]
    ups = {f"dep{i}": {"base_url": m.url, "api_key": "k"} for i, m in enumerate(mocks)}
    route = {"match": {"model": "gpt-4o"}, "upstream": "dep0", "affinity": affinity,
             "targets": [{"upstream": "dep0"}, {"upstream": "dep1"}]}
    gw = await start_gateway(gateway_config(mocks[0].url, upstreams=ups, routes=[route]))
    prompt = cached = 0
    gate = asyncio.Semaphore(in_flight)
    try:
        async with AsyncOpenAI(base_url=gw.base_url, api_key="k", max_retries=0) as client:
            async def send(messages: list[dict[str, Any]]) -> tuple[int, int]:
                async with gate:
                    done = await client.chat.completions.create(
                        model="gpt-4o", messages=messages)  # type: ignore[arg-type]
                usage = done.usage
                assert usage is not None and usage.prompt_tokens_details is not None
                return usage.prompt_tokens, usage.prompt_tokens_details.cached_tokens or 0

            for p, c in await asyncio.gather(*(send(m) for m in prompts)):
                prompt, cached = prompt + p, cached + c
        split = [len(m.recorder.attempts) for m in mocks]
    finally:
        await gw.close()
        for m in mocks:
            await m.close()
    return f"cached prompt tokens {cached / prompt:.1%} of {prompt} (requests per deployment {split})"


async def main(args: argparse.Namespace) -> None:
    prompts = conversations(args.agents, args.turns, random.Random(7))
    print(f"affinity none    {await one_run('none', prompts, args.in_flight)}")
    print(f"affinity prefix  {await one_run('prefix', prompts, args.in_flight)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--agents", type=int, default=12)
    parser.add_argument("--turns", type=int, default=15)
    parser.add_argument("--in-flight", type=int, default=4)
    asyncio.run(main(parser.parse_args()))
