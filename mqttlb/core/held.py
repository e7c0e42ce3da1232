"""The messages a router holds, in queues by name, with their number and payload bytes kept as they change.

A router holds a message for a pool that has no healthy worker (by pool), and
a departed worker's devices' new messages until what it left is reclaimed (by
worker). How many it holds, and how many bytes, are read for every turn and
for every message held (``router.max_held``, ``router.max_held_bytes``, the
window's room). Summed over the queues, they cost a router holding 30,000
messages for a pool without workers 1.6 ms on each message of every pool;
kept here, they cost nothing to read. So the queues change only through this
class: a queue handed out (``get``) is for reading.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, KeysView
from typing import Generic, TypeVar

Item = TypeVar("Item")


class HeldQueues(Generic[Item]):
    """Queues of items by name, oldest first, with ``count`` and ``size`` (the sum of ``size_of``) kept."""

    def __init__(self, size_of: Callable[[Item], int]) -> None:
        self._size_of = size_of
        self._queues: dict[str, deque[Item]] = {}
        self.count = 0
        self.size = 0

    def names(self) -> KeysView[str]:
        return self._queues.keys()

    def get(self, name: str) -> deque[Item] | None:
        """The queue of ``name``, to read: change it only through this class."""
        return self._queues.get(name)

    def items(self) -> list[tuple[str, deque[Item]]]:
        """Every name and its queue, to read."""
        return list(self._queues.items())

    def open(self, name: str) -> None:
        """Make ``name``'s queue, empty, if it has none."""
        self._queues.setdefault(name, deque())

    def append(self, name: str, item: Item) -> None:
        """Add ``item`` at the young end of ``name``'s queue, made if need be."""
        self._queues.setdefault(name, deque()).append(item)
        self.count += 1
        self.size += self._size_of(item)

    def popleft(self, name: str) -> Item:
        """Take the oldest item of ``name``'s queue; the queue stays, though empty."""
        item = self._queues[name].popleft()
        self.count -= 1
        self.size -= self._size_of(item)
        return item

    def pop(self, name: str) -> deque[Item]:
        """Take ``name``'s whole queue (empty if it had none), and the name with it."""
        queue = self._queues.pop(name, deque())
        self.count -= len(queue)
        self.size -= sum(map(self._size_of, queue))
        return queue

    def replace(self, name: str, items: Iterable[Item]) -> None:
        """``name``'s queue becomes ``items``, in order (none: an empty queue)."""
        queue = deque(items)
        self.pop(name)
        self._queues[name] = queue
        self.count += len(queue)
        self.size += sum(map(self._size_of, queue))

    def take_all(self) -> list[Item]:
        """Every item, queue after queue, and every name with them."""
        items = [item for queue in self._queues.values() for item in queue]
        self._queues = {}
        self.count = self.size = 0
        return items
