"""The tasks behind `subscribe` and `consume`: one per subscription id, each in its own
cancel scope, so `unsubscribe` stops just that one and a lost database ends just that one.

An event subscription's task runs only while there is work: catching up, or writing what
the hub could not write itself. Idle on the live path it parks (`Subscription.resume`): the
task ends, the hub writes the subscription's events through its direct writer, and the
first batch the writer refuses starts a new task (`EventSubscription.__call__`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import aclosing

import anyio

from backend.core import exactjson
from backend.core.errors import CursorExpired
from backend.core.filters import Filter
from backend.core.names import Pattern
from backend.entities.event import Event
from backend.interface.http.errors import DB_DOWN
from backend.interface.stream.encoding import reset_payload, ws_event_frame
from backend.interface.stream.session import Farewell, Opened, Session
from backend.interface.stream.ws.connection import Connection
from backend.interface.stream.ws.direct import direct_frames
from backend.interface.stream.ws.frames import SubId
from backend.services.consume import STREAM_READ_AHEAD, Delivery, consume


class EventSubscription:
    """One `subscribe` of a socket: its session, and the cancel scope of the task serving
    it while one runs (None while it is parked or not started yet)."""

    __slots__ = ("cancel_called", "connection", "id", "scope", "session", "text")

    def __init__(
        self,
        connection: Connection,
        sub: SubId,
        patterns: tuple[Pattern, ...],
        after: str | int,
        flt: Filter | None,
    ) -> None:
        self.connection = connection
        self.id = sub
        self.text = exactjson.dumps(sub).decode()
        self.session = Session(connection.state.engine, patterns, after, flt, resume=self)
        self.scope: anyio.CancelScope | None = None
        self.cancel_called = False

    def start(self) -> bool:
        """Serve it from a new task of the socket's (`Connection.spawn`); False once the
        server is shutting down."""
        return self.connection.spawn(run_subscription, self)

    def cancel(self) -> None:
        """Stop it for good: its task, or its parked subscription at once; no event of its
        id is written after this returns."""
        self.cancel_called = True
        if self.scope is not None:
            self.scope.cancel()
        else:
            self.release()

    def release(self) -> None:
        """Close the session, and break the cycles through its `resume` and `sink` (both
        lead back here), so that an ended subscription is freed at once. Only while no
        task iterates the session."""
        session = self.session
        session.close()
        session.resume = session.sink = None

    def __call__(self) -> None:
        """Resume after a park. Called from whichever task woke the buffer (the hub's, an
        engine stopping): it must not raise."""
        if self.cancel_called:  # parked by a task that never saw its cancellation
            self.release()
            return
        if not self.start():  # the server is shutting down: nobody is left to serve it
            self.cancel_called = True
            self.release()


async def run_subscription(sub: EventSubscription) -> None:
    """A lost database ends just this subscription (the client may resubscribe with
    `after`); its stream ending means the engine is stopping, which ends the connection."""
    if sub.cancel_called:
        return
    connection = sub.connection
    parked = False
    with anyio.CancelScope() as scope:
        sub.scope = scope
        try:
            parked = await _follow(connection, sub)
            if not parked:
                connection.say_farewell(Farewell.SHUTDOWN)
        except DB_DOWN as exc:
            await connection.send_error({"id": sub.id}, exc, unless=sub)
        finally:
            if sub.scope is scope:
                sub.scope = None
            # A cancel that came while the task was runnable (the await it was in had
            # already completed) is delivered only at its next checkpoint, and the task may
            # park before it reaches one: nothing would ever close the subscription then.
            if sub.cancel_called or not parked:
                sub.release()
                if connection.subscriptions.get(sub.id) is sub:
                    del connection.subscriptions[sub.id]


async def _follow(connection: Connection, sub: EventSubscription) -> bool:
    """`subscribed` once the start is fixed, then events, and resets in-band; True when
    the subscription parked."""
    session = sub.session
    metrics = connection.state.metrics
    if session.sink is None:
        session.sink = direct_frames(connection, sub, sub.text)
    async with aclosing(session.items()) as items:
        async for item in items:
            if isinstance(item, Opened):
                await connection.send({"op": "subscribed", "id": sub.id}, unless=sub)
            elif isinstance(item, CursorExpired):
                reset = {"op": "reset", "sub": sub.id, **reset_payload(item)}
                await connection.send(reset, unless=sub)
            else:
                await connection.write(_event_frames(sub, item))
                metrics.delivered("ws", item)
    return session.parked


def _event_frames(sub: EventSubscription, events: list[Event]) -> Iterator[bytes]:
    """The events' frames, made once the socket is this write's; none once the
    subscription is cancelled: a read that completed just as the cancel came has not seen
    it, and `unsubscribed` may be out already."""
    if sub.cancel_called:
        return
    for event in events:
        yield ws_event_frame(sub.text, event)


async def run_consumer(
    connection: Connection,
    sub: SubId,
    scope: anyio.CancelScope,
    queue: str,
    prefetch: int,
    lease: float,
) -> None:
    """Deliveries of `queue` as `message` frames, held until the client settles them; on
    exit (unsubscribe, disconnect) the unsettled ones go back to the queue at once."""
    sub_json = exactjson.dumps(sub)
    with scope:
        try:
            async with consume(
                connection.state.engine.queues,
                queue,
                prefetch=prefetch,
                lease=lease,
                marks_delivered=True,
                read_ahead=max(prefetch, STREAM_READ_AHEAD),
            ) as deliveries:
                await connection.send({"op": "subscribed", "id": sub})
                async for delivery in deliveries:
                    connection.held[str(delivery.id)] = (sub, delivery)
                    await connection.write(_message_frame(sub_json, delivery, scope))
        except DB_DOWN as exc:
            await connection.send_error({"id": sub}, exc, unless=scope)
        finally:
            for key in [k for k, (owner, _) in connection.held.items() if owner == sub]:
                del connection.held[key]
            if connection.subscriptions.get(sub) is scope:
                del connection.subscriptions[sub]
            connection.nudge_reader()  # a reader kept for consumers may end now


def _message_frame(
    sub_json: bytes, delivery: Delivery, scope: anyio.CancelScope
) -> Iterator[bytes]:
    """The `message` frame, made when `write` is about to send it: from then on the
    message counts as delivered; a consumer stopped before that gives it back unused.

    Nothing once the consumer is cancelled: `unsubscribed` may already be out, and a claim
    finished under its shield reaches here before the cancellation does (the write itself
    need not wait, so it would not see it either)."""
    if scope.cancel_called:
        return
    delivery.delivered = True
    body = delivery.message.to_json()
    yield b'{"op":"message","sub":' + sub_json + b"," + body[1:]
