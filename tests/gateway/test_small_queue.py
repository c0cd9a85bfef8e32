"""gateway.small_queue: the part of ``deque`` aiohttp's short per-connection queues use, in a list."""
from __future__ import annotations

import sys
from collections import deque

from gateway.small_queue import SmallQueue


def test_it_queues_first_in_first_out_like_a_deque() -> None:
    queue: SmallQueue[int] = SmallQueue()
    twin: deque[int] = deque()
    for q in (queue, twin):
        q.append(1)
        q.append(2)
    assert queue.popleft() == twin.popleft() == 1
    assert (queue[0], queue[-1], len(queue), bool(queue)) == (twin[0], twin[-1], len(twin), bool(twin))
    assert queue.popleft() == twin.popleft() == 2 and not queue and not twin


def test_it_takes_over_what_a_deque_held() -> None:
    assert SmallQueue(deque([3, 4])).popleft() == 3


def test_an_empty_one_is_a_fraction_of_an_empty_deque() -> None:
    assert sys.getsizeof(SmallQueue()) <= 64 and sys.getsizeof(deque()) > 600  # the control: a 64-slot block
