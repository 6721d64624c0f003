"""The tasks behind `subscribe` and `consume`: one per subscription id, each in its own
cancel scope, so `unsubscribe` stops just that one and a lost database ends just that one.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import aclosing

import anyio

from backend.core import exactjson
from backend.core.errors import CursorExpired
from backend.core.filters import Filter
from backend.core.names import Pattern
from backend.interface.http.errors import DB_DOWN
from backend.interface.stream.encoding import reset_payload, ws_event_frame
from backend.interface.stream.session import Farewell, Opened, Session
from backend.interface.stream.ws.connection import Connection
from backend.interface.stream.ws.direct import direct_frames
from backend.interface.stream.ws.frames import SubId
from backend.services.consume import STREAM_READ_AHEAD, Delivery, consume


async def run_subscription(
    connection: Connection,
    sub: SubId,
    scope: anyio.CancelScope,
    patterns: tuple[Pattern, ...],
    after: str | int,
    flt: Filter | None,
) -> None:
    """A lost database ends just this subscription (the client may resubscribe with
    `after`); its stream ending means the engine is stopping, which ends the connection."""
    with scope:
        try:
            await _follow(connection, sub, Session(connection.state.engine, patterns, after, flt))
            connection.say_farewell(Farewell.SHUTDOWN)
        except DB_DOWN as exc:
            await connection.send_error({"id": sub}, exc)
        finally:
            if connection.subscriptions.get(sub) is scope:
                del connection.subscriptions[sub]


async def _follow(connection: Connection, sub: SubId, session: Session) -> None:
    """`subscribed` once the start is fixed, then events, and resets in-band."""
    sub_text = exactjson.dumps(sub).decode()
    metrics = connection.state.metrics
    session.sink = direct_frames(connection, sub, sub_text)
    async with aclosing(session.items()) as items:
        async for item in items:
            if isinstance(item, Opened):
                await connection.send({"op": "subscribed", "id": sub})
            elif isinstance(item, CursorExpired):
                await connection.send({"op": "reset", "sub": sub, **reset_payload(item)})
            else:
                await connection.write(ws_event_frame(sub_text, event) for event in item)
                metrics.delivered("ws", item)


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
            await connection.send_error({"id": sub}, exc)
        finally:
            for key in [k for k, (owner, _) in connection.held.items() if owner == sub]:
                del connection.held[key]
            if connection.subscriptions.get(sub) is scope:
                del connection.subscriptions[sub]


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
