"""One event subscription on a streaming transport, shared by SSE and WebSocket.

A transport iterates `Session.items()` and writes what it gets in its own encoding: the
`OPENED` marker once the start is fixed, batches of events, and in-band resets (a resume
point that is gone restarts the subscription from the oldest retained event, never a
silent skip). Shutdown and token expiry end a session from outside (`end`, called by the
process's SSE sweep; the WebSocket sweep ends the whole connection instead, and
queue-consumer streams wait in `until_farewell`);
the transport then says goodbye its own way: SSE writes a comment, WebSocket closes the
whole socket.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from enum import Enum

import anyio

from backend.core.errors import CursorExpired
from backend.core.filters import Filter
from backend.core.names import Pattern
from backend.entities.event import Event
from backend.services.engine import Engine
from backend.services.hub import DirectWriter
from backend.services.subscribe import EARLIEST, Subscription


class Farewell(Enum):
    """Why a stream ends before its client leaves; the value is the text clients see."""

    SHUTDOWN = "server shutting down; reconnect"
    EXPIRED = "token expired"
    GONE = "client gone"
    """The server saw the client's connection close: nobody is left to hear a goodbye."""


def farewell_due(stopping: anyio.Event, expires_at: float | None) -> Farewell | None:
    """The farewell owed now, if any: an expired token first, then a shutdown."""
    if expires_at is not None and time.time() >= expires_at:
        return Farewell.EXPIRED
    if stopping.is_set():
        return Farewell.SHUTDOWN
    return None


async def until_farewell(stopping: anyio.Event, expires_at: float | None) -> Farewell:
    """Wait for shutdown or the wall-clock `expires_at`, whichever comes first.

    One wait for both rather than a task each: every idle stream holds it while it is open.
    """
    while (farewell := farewell_due(stopping, expires_at)) is None:
        if expires_at is None:
            await stopping.wait()
        else:
            # The loop's clock may wake a hair early against the wall clock: the check above
            # then waits again, so the token's own expiry check agrees with the farewell.
            with anyio.move_on_after(expires_at - time.time()):
                await stopping.wait()
    return farewell


class Opened:
    """The start is fixed: everything published from now on will be delivered."""


OPENED = Opened()

Item = Opened | list[Event] | CursorExpired


@dataclass(eq=False)
class Session:
    """A subscription that survives resets and that another task can end with a farewell."""

    engine: Engine
    patterns: tuple[Pattern, ...]
    after: str | int
    filter: Filter | None
    farewell: Farewell | None = None
    sink: DirectWriter | None = None
    """The transport's direct writer, handed to each subscription (see `Subscription.sink`)."""
    resume: Callable[[], None] | None = None
    """The transport's way to iterate `items` again from a new task, handed to each
    subscription (see `Subscription.resume`); `items` then ends whenever it parks."""
    announced: bool = field(default=False, init=False)
    """`OPENED` has been yielded (by this `items` or an earlier one that parked)."""
    _subscription: Subscription | None = field(default=None, init=False)
    _opened: Subscription | CursorExpired | None = field(default=None, init=False)

    async def open(self) -> None:
        """Fix the start now, before the transport answers its client, so that every event
        committed after the answer is delivered (`after=latest` included). A lost database
        raises here, where the transport can still refuse with an error status."""
        try:
            self._opened = await self.engine.start_subscription(
                self.patterns, self.after, self.filter
            )
        except CursorExpired as exc:
            self._opened = exc

    def close(self) -> None:
        """Let go of a start fixed by `open` that `items` never took, and of a parked
        subscription; safe to repeat, and only while no task iterates `items`."""
        opened, self._opened = self._opened, None
        if isinstance(opened, Subscription):
            opened.close()
        parked, self._subscription = self._subscription, None
        if parked is not None:
            parked.close()

    def end(self, farewell: Farewell) -> None:
        """Stop from outside; the first farewell wins, and `items` then runs out."""
        if self.farewell is None:
            self.farewell = farewell
            if self._subscription is not None:
                self._subscription.stop()

    def poke(self) -> None:
        """Have a live `items` yield an empty batch soon (see `Subscription.poke`)."""
        if self._subscription is not None:
            self._subscription.poke()

    async def items(self) -> AsyncGenerator[Item, None]:
        """`OPENED` once (before any batch or reset), then batches (empty after a `poke`)
        and resets.

        Ends when the engine stops or the session is ended; a lost database raises. With
        `resume` set it also ends when its subscription parks (`parked`), and the next
        call carries on from there.
        """
        after = self.after
        while self._subscription is not None or self.farewell is None:
            try:
                subscription = self._subscription  # parked by an earlier call
                if subscription is None:
                    ready, self._opened = self._opened, None
                    if isinstance(ready, CursorExpired):
                        raise ready
                    subscription = ready
                    if subscription is None:
                        subscription = await self.engine.start_subscription(
                            self.patterns, after, self.filter
                        )
                    self._follow(subscription)
                parked = False
                try:
                    if not self.announced:
                        self.announced = True
                        yield OPENED
                    async with aclosing(subscription.batches()) as batches:
                        async for batch in batches:
                            yield batch
                    parked = subscription.parked
                finally:
                    if not parked:
                        self._subscription = None
                        subscription.close()
                return
            except CursorExpired as exc:
                reset = exc
            if not self.announced:
                self.announced = True
                yield OPENED
            yield reset
            after = EARLIEST

    @property
    def parked(self) -> bool:
        """`items` ended because its subscription parked; call it again when resumed."""
        return self._subscription is not None and self._subscription.parked

    def _follow(self, subscription: Subscription) -> None:
        self._subscription = subscription
        subscription.sink = self.sink
        subscription.resume = self.resume
        if self.farewell is not None:
            subscription.stop()
