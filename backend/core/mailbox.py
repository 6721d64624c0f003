"""A bounded buffer with one reader that takes everything ready at once.

The hub hands each event to every matching subscriber without ever waiting, and each
subscriber takes what has piled up in one go. anyio's memory object streams do more than
that needs on every wait (they record the waiting task for their statistics), which on a
busy fan-out was the largest single cost of a delivery. This buffer waits on one bare
future of the running asyncio loop (an `anyio.Event` would bring an asyncio Event and its
waiters' deque, about 1 KiB, for every idle subscriber), created only when the reader
finds it empty, and holds its deque only while there is something in it: most
subscribers are idle, and an empty deque costs more than the rest of the mailbox. asyncio
only, as the whole server is (asyncpg); cancellation works as for any other await.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Mailbox(Generic[T]):
    """Holds at most `capacity` items; `offer_all` never blocks; the reader takes what is
    `ready` and awaits `arrival` only when there is nothing."""

    __slots__ = ("_items", "_on_wake", "_poked", "_waiter", "capacity", "closed")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self.closed = False
        self._items: deque[T] | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._on_wake: Callable[[], None] | None = None
        self._poked = False

    def offer_all(self, items: list[T]) -> bool:
        """Add all of `items`, or none of them (False) when they do not fit or it is closed."""
        if self.closed:
            return False
        held = self._items
        if held is None:
            if len(items) > self.capacity:
                return False
            self._items = deque(items)
        elif len(held) + len(items) > self.capacity:
            return False
        else:
            held.extend(items)
        self._wake()
        return True

    def close(self) -> None:
        """No more items: the reader gets what is left, then an empty list."""
        self.closed = True
        self._wake()

    def poke(self) -> None:
        """Wake the reader with nothing to read: `ready` then gives one empty list while the
        mailbox is still open (a transport's heartbeat uses this to run on its own task)."""
        self._poked = True
        self._wake()

    def ready(self, limit: int) -> list[T] | None:
        """Up to `limit` items, oldest first, without waiting; [] once closed and drained,
        or after a `poke` (then `closed` is still False); None when there is nothing to
        take yet (await `arrival` and ask again)."""
        items = self._items
        if not items:
            if self.closed or self._poked:
                self._poked = False
                return []
            return None
        self._poked = False
        if len(items) <= limit:
            self._items = None
            return list(items)
        return [items.popleft() for _ in range(limit)]

    def arrival(self) -> asyncio.Future[None]:
        """A future done by the next offer, `close` or `poke`. The reader awaits it in its
        own frame (no coroutine of the mailbox's stays alive while it waits); cancelling
        that await loses nothing, as nothing is taken until `ready`."""
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        return waiter

    def on_wake(self, hook: Callable[[], None] | None) -> None:
        """Call `hook` once, at the next offer, `close` or `poke`: for a reader that stopped
        waiting and must be started again (`Subscription.resume`); None withdraws it."""
        self._on_wake = hook

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)
        hook = self._on_wake
        if hook is not None:
            self._on_wake = None
            hook()
