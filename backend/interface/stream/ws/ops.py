"""The client ops of `pgcast.v1`: the `OPS` table and a handler for each.

Frames are handled one at a time, so a client's publishes commit in the order it sent
them; acks and nacks commit in the background (`settling.py`) while the next frames are
read, and are still answered in order. A bad frame gets an `error` frame naming its `ref`,
`id` or `message_id`, and the socket stays open. `subscribed` is sent once the start
position is fixed, so anything published after the client sees it is delivered. Every op
that names a topic, queue or held message is checked against the token's grants (`ping`,
`unsubscribe` and `auth` name none; an expired token closes the socket, `ws/sweep.py`).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import anyio

from backend.core import exactjson
from backend.core.errors import ShuttingDown
from backend.core.filters import compile_filter
from backend.core.names import parse_patterns, validate_name
from backend.entities.event import format_time
from backend.interface.http.inputs import parse_after
from backend.interface.security.access import throttle
from backend.interface.security.auth import Permission
from backend.interface.stream.encoding import envelopes_json
from backend.interface.stream.ws.connection import REPORTED, Connection
from backend.interface.stream.ws.frames import (
    POLICY_VIOLATION,
    Frame,
    FrameError,
    SubId,
    is_auth_frame,
    is_scalar,
    parse,
    required,
    sub_id,
)
from backend.interface.stream.ws.runners import EventSubscription, run_consumer
from backend.interface.stream.ws.settling import Pending, hand_in, room_to_settle, until_settled
from backend.services.consume import Delivery
from backend.services.queues import (
    MAX_DELAY_SECONDS,
    MAX_LEASE_SECONDS,
    integer,
    number,
    validate_queue,
)
from backend.services.settle import Retry, Settle

MAX_PREFETCH = 100
NACK_DELAY = "delay_seconds"
NACK_DELAY_DEPRECATED = "delay"
"""The old WebSocket name of nack's `delay_seconds`, still accepted; HTTP never used it."""


async def dispatch(connection: Connection, text: str | None) -> None:
    """Run one frame's op; any problem becomes an error frame naming its `ref` or `id`.

    `ack` and `nack` are handed to the connection's settling (`settling.py`) and the next
    frame is read at once; any other op first waits until those are answered.
    """
    if connection.principal is None and not is_auth_frame(text):
        connection.end(POLICY_VIOLATION, 'authentication required: send {"op":"auth"} first')
        return
    echo: Frame = {}
    try:
        frame = parse(text)
        name = frame.get("op")
        if not isinstance(name, str):
            raise FrameError("invalid_frame", "op must be a string")
        op = OPS.get(name)
        if op is None:
            raise FrameError("unknown_op", f"op must be one of: {', '.join(OPS)}")
        if op.echo is not None and op.echo in frame and is_scalar(frame[op.echo]):
            echo[op.echo_as or op.echo] = frame[op.echo]
        if exactjson.contains_nul(text or ""):
            exactjson.refuse_nul(frame)
        unknown = sorted(set(frame) - op.fields - {"op"})
        if unknown:
            raise FrameError("invalid_frame", f"{name} has unknown field(s): {', '.join(unknown)}")
        if op.settle is not None:
            await room_to_settle(connection)
            hand_in(connection, Pending(echo, *op.settle(connection, frame)))
            return
        assert op.handle is not None
        await until_settled(connection)
        await op.handle(connection, frame)
    except REPORTED as exc:
        await room_to_settle(connection)
        if connection.settling is None:
            await connection.send_error(echo, exc)
        else:  # answered in its place, after the settlements handed in before it
            hand_in(connection, Pending(echo, error=exc))


async def subscribe(connection: Connection, frame: Frame) -> None:
    """Validate here, so errors come back at once; the task announces `subscribed`."""
    sub = _new_id(connection, frame)
    patterns = parse_patterns([required(frame, "topic")])
    connection.allow(Permission.SUBSCRIBE, patterns[0].text)
    after = parse_after(frame.get("after"))
    flt = compile_filter(frame.get("filter"))
    subscription = connection.subscriptions[sub] = EventSubscription(
        connection, sub, patterns, after, flt
    )
    if not subscription.start():
        del connection.subscriptions[sub]
        subscription.release()
        raise ShuttingDown("the server is shutting down")


async def unsubscribe(connection: Connection, frame: Frame) -> None:
    """No event of `id` follows `unsubscribed`: its task is cancelled (or its parked
    subscription closed) before this writes, and frames it was writing are ahead of it in
    the queue of writers."""
    sub = sub_id(frame)
    running = connection.subscriptions.pop(sub, None)
    if running is None:
        raise FrameError("unknown_id", "no active subscription has this id")
    running.cancel()
    await connection.send({"op": "unsubscribed", "id": sub})


async def publish(connection: Connection, frame: Frame) -> None:
    """Commit one event, then acknowledge with its envelope under the client's `ref`."""
    ref = required(frame, "ref")
    if not is_scalar(ref):
        raise FrameError("invalid_frame", "ref must be a JSON scalar")
    topic = validate_name(required(frame, "topic"), "topic")
    state = connection.state
    principal = connection.allow(Permission.PUBLISH, topic)
    throttle(connection.websocket, principal)
    event = state.engine.event(
        topic,
        required(frame, "data"),
        type=frame.get("type"),
        key=frame.get("key"),
    )
    published = await state.engine.publish_many([event])
    state.metrics.published.inc(len(published))
    body = b'{"op":"published","ref":%s,"events":%s}' % (
        exactjson.dumps(ref),
        envelopes_json(published),
    )
    await connection.write([body])


async def ping(connection: Connection, _frame: Frame) -> None:
    await connection.send({"op": "pong"})


async def auth(connection: Connection, frame: Frame) -> None:
    """Authenticate a socket opened without a token; answered with `authed`.

    A bad token gets an `unauthorized` error frame and the socket stays
    unauthenticated. Servers without auth answer `authed` and ignore the token.
    """
    token = required(frame, "token")
    if not isinstance(token, str):
        raise FrameError("invalid_frame", "token must be a string")
    guard = connection.state.guard
    if not guard.enabled:
        await connection.send({"op": "authed", "sub": None, "expires": None})
        return
    if connection.principal is not None:
        raise FrameError("invalid_frame", "this connection is already authenticated")
    principal = guard.verify(token)
    connection.principal = principal
    expires = principal.expires_at or time.time()
    await connection.send(
        {"op": "authed", "sub": principal.subject, "expires": _wall_time(expires)}
    )


async def consume(connection: Connection, frame: Frame) -> None:
    """Start a queue consumer under a subscription id; `unsubscribe` stops it and
    returns its unsettled messages to the queue at once (as does disconnecting)."""
    sub = _new_id(connection, frame)
    queue = validate_queue(required(frame, "queue"))
    connection.allow(Permission.CONSUME, queue)
    prefetch = integer(frame.get("prefetch", 1), "prefetch", 1, MAX_PREFETCH)
    lease = number(frame.get("lease", 30), "lease", 0.1, MAX_LEASE_SECONDS)
    scope = connection.subscriptions[sub] = anyio.CancelScope()
    if not connection.spawn(run_consumer, connection, sub, scope, queue, prefetch, lease):
        del connection.subscriptions[sub]
        raise ShuttingDown("the server is shutting down")


def ack(connection: Connection, frame: Frame) -> tuple[Delivery, Settle]:
    """The ack of a held message; answered with `acked` once committed (`settling.py`)."""
    delivery = _held_delivery(connection, frame)
    del connection.held[str(delivery.id)]
    return delivery, delivery.settling()


def nack(connection: Connection, frame: Frame) -> tuple[Delivery, Settle]:
    """The nack of a held message; answered with `nacked` and the state it moved to."""
    delivery = _held_delivery(connection, frame)
    delay = _nack_delay(frame)
    error = frame.get("error")
    if error is not None and not isinstance(error, str):
        raise FrameError("invalid_frame", "error must be a string")
    del connection.held[str(delivery.id)]
    return delivery, delivery.settling(Retry(delay, error and error[:4000]))


def _nack_delay(frame: Frame) -> float | None:
    """`delay_seconds`, or its deprecated spelling `delay`; both only if they agree."""
    given = [name for name in (NACK_DELAY, NACK_DELAY_DEPRECATED) if name in frame]
    if not given:
        return None
    if len(given) == 2 and frame[NACK_DELAY] != frame[NACK_DELAY_DEPRECATED]:
        raise FrameError(
            "invalid_frame",
            f"nack has both '{NACK_DELAY}' and its deprecated alias '{NACK_DELAY_DEPRECATED}'"
            f" with different values; send only '{NACK_DELAY}'",
        )
    value = frame[given[0]]
    return None if value is None else number(value, given[0], 0, MAX_DELAY_SECONDS)


async def extend(connection: Connection, frame: Frame) -> None:
    delivery = _held_delivery(connection, frame)
    seconds = number(required(frame, "seconds"), "seconds", 0.1, MAX_LEASE_SECONDS)
    until = await delivery.extend(seconds)
    await connection.send(
        {"op": "extended", "message": str(delivery.id), "lease_until": format_time(until)}
    )


def _new_id(connection: Connection, frame: Frame) -> SubId:
    sub = sub_id(frame)
    if sub in connection.subscriptions:
        raise FrameError("duplicate_id", "a subscription with this id is active")
    limit = connection.state.settings.max_subscriptions
    if len(connection.subscriptions) >= limit:
        raise FrameError("too_many_subscriptions", f"at most {limit} per connection")
    return sub


def _held_delivery(connection: Connection, frame: Frame) -> Delivery:
    """A message this socket holds, on a queue the token (still) lets it consume."""
    connection.allow(Permission.CONSUME)
    message = str(required(frame, "message"))
    held = connection.held.get(message)
    if held is None:
        raise FrameError("unknown_message", "this connection holds no message with this id")
    delivery = held[1]
    connection.allow(Permission.CONSUME, delivery.message.queue)
    return delivery


def _wall_time(timestamp: float) -> str:
    return format_time(datetime.fromtimestamp(timestamp, UTC))


Handler = Callable[[Connection, Frame], Awaitable[None]]
Settler = Callable[[Connection, Frame], tuple[Delivery, Settle]]


@dataclass(frozen=True)
class Op:
    """A client op: its handler, the field echoed in its error frames, its allowed fields."""

    handle: Handler | None
    """None for `ack` and `nack`, which `settle` instead."""
    echo: str | None
    fields: frozenset[str]
    echo_as: str | None = None
    """Key of the echoed field in error frames when it differs (`message` is taken there)."""
    settle: Settler | None = None
    """For `ack` and `nack`: the settlement, committed and answered by `settling.py`."""


OPS: dict[str, Op] = {
    "subscribe": Op(subscribe, "id", frozenset({"id", "topic", "after", "filter"})),
    "unsubscribe": Op(unsubscribe, "id", frozenset({"id"})),
    "publish": Op(publish, "ref", frozenset({"ref", "topic", "data", "type", "key"})),
    "ping": Op(ping, None, frozenset()),
    "consume": Op(consume, "id", frozenset({"id", "queue", "prefetch", "lease"})),
    "ack": Op(None, "message", frozenset({"message"}), "message_id", ack),
    "nack": Op(
        None,
        "message",
        frozenset({"message", NACK_DELAY, NACK_DELAY_DEPRECATED, "error"}),
        "message_id",
        nack,
    ),
    "extend": Op(extend, "message", frozenset({"message", "seconds"}), "message_id"),
    "auth": Op(auth, None, frozenset({"token"})),
}
