"""A lean stand-in for the asyncio.Queue that uvicorn's WebSocket protocol keeps for every
connection.

An idle socket should cost little more than its buffers; an asyncio.Queue holds three
deques and an Event (about 3 KiB). `Inbox` keeps a list, and makes a waiter only while
the app waits to receive. It offers just what the protocol calls: `put_nowait`, `get` and
`empty`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Inbox(Generic[T]):
    """A first-in first-out queue with one reader (the app's `receive`) and no bound.

    With a `listener`, nobody needs to wait on it: the listener hears of each item that
    arrives while no reader waits, and starts one (`ws.driven`)."""

    __slots__ = ("_items", "_waiter", "listener")

    def __init__(self) -> None:
        self._items: list[T] = []
        self._waiter: asyncio.Future[None] | None = None
        self.listener: Callable[[], None] | None = None

    def put_nowait(self, item: T) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None:
            if not waiter.done():
                waiter.set_result(None)
        elif self.listener is not None:
            self.listener()

    def empty(self) -> bool:
        return not self._items

    async def get(self) -> T:
        """The oldest item, waiting for one if there is none; a cancelled wait loses none."""
        while not self._items:
            if self._waiter is not None:
                raise RuntimeError("another task is already waiting to receive")
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        return self._items.pop(0)
