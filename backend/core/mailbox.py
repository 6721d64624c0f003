"""A bounded buffer with one reader that takes everything ready at once.

The hub hands each event to every matching subscriber without ever waiting, and each
subscriber takes what has piled up in one go. anyio's memory object streams do more than
that needs on every wait (they record the waiting task for their statistics), which on a
busy fan-out was the largest single cost of a delivery. This buffer waits on one plain
`anyio.Event`, created only when the reader finds it empty.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

import anyio

T = TypeVar("T")


class Mailbox(Generic[T]):
    """Holds at most `capacity` items; `offer` never blocks, `take` waits only when empty."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self.closed = False
        self._items: deque[T] = deque()
        self._waiter: anyio.Event | None = None

    def __len__(self) -> int:
        return len(self._items)

    def offer(self, item: T) -> bool:
        """Add `item`; False (and nothing added) when the mailbox is full or closed."""
        if self.closed or len(self._items) >= self.capacity:
            return False
        self._items.append(item)
        self._wake()
        return True

    def close(self) -> None:
        """No more items: the reader gets what is left, then an empty list."""
        self.closed = True
        self._wake()

    async def take(self, limit: int) -> list[T]:
        """Up to `limit` items, oldest first; waits while empty; [] once closed and drained.

        Returns at once, without a checkpoint, when items are ready.
        """
        while not self._items:
            if self.closed:
                return []
            waiter = self._waiter = anyio.Event()
            await waiter.wait()
        items = self._items
        if len(items) <= limit:
            taken = list(items)
            items.clear()
        else:
            taken = [items.popleft() for _ in range(limit)]
        return taken

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            waiter.set()
