"""Lean stand-ins for the asyncio.Queue and asyncio.Event that uvicorn's WebSocket
protocol keeps for every connection.

An idle socket should cost little more than its buffers; an asyncio.Queue holds three
deques and an Event (about 3 KiB), an asyncio.Event one deque (about 0.8 KiB). These keep
a list, and make a waiter only while someone waits. They offer just what the protocol
calls: `put_nowait`, `get` and `empty`; `set`, `clear` and `wait`.
"""

from __future__ import annotations

import asyncio
from typing import Generic, TypeVar

T = TypeVar("T")


class Inbox(Generic[T]):
    """A first-in first-out queue with one reader (the app's `receive`) and no bound."""

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: list[T] = []
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: T) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

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


class Gate:
    """Open or shut; `wait` returns at once while open, else when it is next opened."""

    __slots__ = ("_open", "_waiters")

    def __init__(self) -> None:
        self._open = False
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._open

    def set(self) -> None:
        self._open = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._open = False

    async def wait(self) -> None:
        if self._open:
            return
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if self._waiters is not None and waiter in self._waiters:
                self._waiters.remove(waiter)
