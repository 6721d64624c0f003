"""Live events written by the hub straight into a WebSocket subscription's socket.

While a subscription's task waits for events, the hub hands each read's events to this
writer, which sends them as pre-built frames (one per event, built once per event and
subscription id) with no task switch. It refuses, and the task sends as usual, when the
socket is backed up, closing, compressed or served by another server, another task's
write holds the socket, or the batch is over WRITE_BYTES; and it writes
nothing once the subscription is cancelled (`unsubscribed` promises that no event of
its id follows, and the task may not have seen its cancellation yet).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from backend.entities.event import Event
from backend.interface.server.metrics import DirectTally
from backend.interface.server.protocols import frame_writer
from backend.interface.stream.encoding import WsEventWire, one_write
from backend.interface.stream.ws.connection import Cancellable, Connection
from backend.services.hub import DirectWriter


class Turns(Protocol):
    """What the writer needs of the socket's connection: whether a write holds it."""

    writing: bool


class DirectFrames:
    """The direct writer of one subscription on one socket."""

    __slots__ = ("connection", "subscription", "tally", "wire", "write")

    def __init__(
        self,
        write: Callable[[bytes], bool],
        connection: Turns,
        subscription: Cancellable,
        sub_text: str,
        tally: DirectTally,
    ) -> None:
        self.write = write
        self.connection = connection
        self.subscription = subscription
        self.wire = WsEventWire(sub_text)
        self.tally = tally

    def __call__(self, events: list[Event]) -> bool:
        # Another task's write holds the socket: its frames stay together.
        if self.subscription.cancel_called or self.connection.writing:
            return False
        wire = self.wire
        frames = wire(events[0]) if len(events) == 1 else one_write([wire(e) for e in events])
        if frames is None or not self.write(frames):
            return False
        self.tally.add(events)
        return True


def direct_frames(
    connection: Connection, subscription: Cancellable, sub_text: str
) -> DirectWriter | None:
    """A subscription's direct writer, or None where the socket cannot have one; it
    writes nothing once the subscription is cancelled."""
    write = frame_writer(connection.websocket.scope)
    if write is None:
        return None
    return DirectFrames(
        write, connection, subscription, sub_text, connection.state.metrics.tally("ws")
    )
