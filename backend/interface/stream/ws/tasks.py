"""The task group where the work of every WebSocket of the process runs.

A task group of its own would cost every idle socket about 1 KiB (docs/performance.md),
so a socket's tasks (the reader of a driven socket, its subscriptions, consumers and
settlements, its close) run here instead, each in a cancel scope of the socket's own
(`Connection.spawn`). One socket's failure must not reach the others, so an error that
escapes a task is logged here, and so is a cancellation that did not come from this group
(a library cancelling a future it does not own): either would otherwise cancel the group
and with it every socket. The group is the app's, nested in its lifespan, and closes
before the engine does.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVarTuple

import anyio
from anyio.abc import TaskGroup

logger = logging.getLogger(__name__)

Ts = TypeVarTuple("Ts")


class SocketTasks:
    """Starts the process's WebSocket tasks; refuses once the app is shutting down."""

    __slots__ = ("_group", "open")

    def __init__(self, group: TaskGroup) -> None:
        self._group = group
        self.open = True

    def start(self, work: Callable[[*Ts], Awaitable[object]], *args: *Ts) -> bool:
        """Run `work(*args)` in a new task; False, and nothing started, once closed."""
        if not self.open:
            return False
        self._group.start_soon(self._isolated, work, args)
        return True

    def close(self) -> None:
        """Start nothing more, and cancel what runs."""
        self.open = False
        self._group.cancel_scope.cancel()

    async def _isolated(self, work: Callable[[*Ts], Awaitable[object]], args: tuple[*Ts]) -> None:
        try:
            await work(*args)
        except Exception:
            logger.exception("unexpected error in a WebSocket task", extra={"action": "ws_error"})
        except anyio.get_cancelled_exc_class():
            if self._group.cancel_scope.cancel_called:
                raise
            logger.warning(
                "a WebSocket task was cancelled from outside its socket",
                extra={"action": "ws_error"},
            )
