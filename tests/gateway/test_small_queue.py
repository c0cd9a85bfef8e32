"""gateway.small_queue: the part of ``deque`` aiohttp's short per-connection queues use, in a list."""
from __future__ import annotations

import sys
from collections import deque

from gateway.small_queue import GROW_AT, SmallQueue, outgrow


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


def test_appendleft_puts_an_item_first() -> None:
    queue: SmallQueue[int] = SmallQueue([2])
    queue.appendleft(1)
    assert queue == [1, 2] and queue.popleft() == 1


class _Owner:
    queue: object = None


def test_outgrow_puts_a_deque_in_the_owners_attribute_past_the_limit() -> None:
    """``pop(0)`` on a long list is quadratic to drain (a burst of tiny chunks in one read); past
    ``GROW_AT`` items the owner's attribute becomes a deque with the same items, in order. Control: at
    ``GROW_AT`` it is still the small list."""
    owner = _Owner()
    queue: SmallQueue[int] = SmallQueue(range(GROW_AT))
    owner.queue = queue
    outgrow(owner, "queue")
    assert owner.queue is queue and len(queue) == GROW_AT  # the control
    queue.append(GROW_AT)
    outgrow(owner, "queue")
    grown = owner.queue
    assert type(grown) is deque and list(grown) == list(range(GROW_AT + 1))
    assert grown.popleft() == 0
    outgrow(owner, "queue")  # a deque already: left as it is
    assert owner.queue is grown
