"""The WebSocket transport: many subscriptions and publishes over one socket (`pgcast.v1`).

Frames are JSON text. The receiver loop handles client frames one at a time through the
`OPS` table, so a client's publishes commit in the order it sent them; a bad frame gets
an `error` frame and the socket stays open. Each subscription runs in its own task under
its own cancel scope, so `unsubscribe` stops just that one. `subscribed` is sent once the
start position is fixed, so anything published after the client sees it is delivered.

Everything outgoing goes through one bounded stream drained by a single writer task: a
slow client holds its subscriptions back (the hub then moves them to catch-up, so memory
stays bounded and nothing is lost), and a client that accepts nothing for SEND_TIMEOUT is
dropped without a close frame, because a close frame could not get through either. It
resumes by subscribing again with `after` set to the last id it saw.

Close codes: 1001 when the server shuts down (or its engine stops), 1011 on an internal
error; uvicorn closes with 1009 a frame over WS_MAX_FRAME_BYTES. A handshake offering
only other subprotocols is refused with HTTP 403.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import orjson
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from starlette.websockets import WebSocket, WebSocketDisconnect

from backend.core.concurrency import unwrap_single_error
from backend.core.errors import CursorExpired, DatabaseUnavailable, PgcastError
from backend.core.filters import Filter, compile_filter
from backend.core.names import Pattern, parse_patterns
from backend.entities.event import format_time
from backend.interface.encoding import envelopes_json, reset_payload, ws_event_frame
from backend.interface.errors import DB_DOWN
from backend.interface.inputs import parse_after
from backend.interface.state import AppState
from backend.services.consume import Delivery, consume
from backend.services.queues import (
    MAX_DELAY_SECONDS,
    MAX_LEASE_SECONDS,
    integer,
    number,
    validate_queue,
)
from backend.services.subscribe import EARLIEST

logger = logging.getLogger(__name__)

SUBPROTOCOL = "pgcast.v1"
MAX_SUBSCRIPTIONS = 100
MAX_PREFETCH = 100
OUTBOX_FRAMES = 256
CLOSE_TIMEOUT = 1.0
GOING_AWAY = 1001
INTERNAL_ERROR = 1011

# Failures of one frame or one subscription that the client hears about in an error frame.
REPORTED: tuple[type[BaseException], ...] = (PgcastError, *DB_DOWN)

SubId = str | int
Frame = dict[str, Any]


class FrameError(PgcastError):
    """A client frame the protocol cannot accept; `code` goes into the error frame."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


async def websocket_endpoint(websocket: WebSocket) -> None:
    """GET /ws: negotiate `pgcast.v1`, serve frames, then close as the session ended."""
    state = AppState.of(websocket)
    offered: list[str] = websocket.scope.get("subprotocols") or []
    if offered and SUBPROTOCOL not in offered:
        await websocket.close(1002)  # before accept, so uvicorn answers HTTP 403
        return
    await websocket.accept(SUBPROTOCOL if offered else None)
    gauge = state.metrics.connections.labels("ws")
    gauge.inc()
    try:
        try:
            code = await _session(websocket, state)
        except Exception:
            logger.exception("WebSocket session failed", extra={"action": "ws_error"})
            code = INTERNAL_ERROR
        if code is not None:
            with contextlib.suppress(WebSocketDisconnect), anyio.move_on_after(CLOSE_TIMEOUT):
                await websocket.close(code)
    finally:
        gauge.dec()


async def _session(websocket: WebSocket, state: AppState) -> int | None:
    """Run the connection until it ends; returns the close code to send, if any."""
    outbox, frames = anyio.create_memory_object_stream[str](OUTBOX_FRAMES)
    with outbox, frames, unwrap_single_error():
        async with anyio.create_task_group() as tasks:
            connection = Connection(websocket, state, outbox, tasks)
            tasks.start_soon(connection.write, frames)
            tasks.start_soon(connection.end_on_shutdown)
            await connection.receive()
            connection.end(None)
    return connection.close_code


def _sub_id(frame: Frame) -> SubId:
    value = _required(frame, "id")
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise FrameError("invalid_frame", "id must be a string or an integer")
    return value


def _required(frame: Frame, name: str) -> Any:
    if name not in frame:
        raise FrameError("invalid_frame", f"{frame['op']} needs '{name}'")
    return frame[name]


def _is_scalar(value: object) -> bool:
    return value is None or isinstance(value, str | int | float)


def _parse(text: str | None) -> Frame:
    if text is None:
        raise FrameError("invalid_frame", "frames must be text, not binary")
    try:
        frame = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise FrameError("invalid_json", f"the frame is not valid JSON: {exc}") from None
    if not isinstance(frame, dict):
        raise FrameError("invalid_frame", "a frame must be a JSON object")
    return frame


def _as_error(exc: BaseException) -> PgcastError:
    """A REPORTED failure as a typed error: a lost database link becomes DatabaseUnavailable."""
    if isinstance(exc, PgcastError):
        return exc
    return DatabaseUnavailable(f"the database is unavailable: {exc}")


@dataclass(eq=False)
class Connection:
    """One socket: its subscriptions, the task group they run in and the outgoing stream."""

    websocket: WebSocket
    state: AppState
    outbox: MemoryObjectSendStream[str]
    tasks: TaskGroup
    subscriptions: dict[SubId, anyio.CancelScope] = field(default_factory=dict)
    held: dict[str, tuple[SubId, Delivery]] = field(default_factory=dict)
    close_code: int | None = None

    def end(self, code: int | None) -> None:
        """Stop the whole connection; the first reason wins. None: send no close frame."""
        if not self.tasks.cancel_scope.cancel_called:
            self.close_code = code
            self.tasks.cancel_scope.cancel()

    async def send(self, frame: Frame) -> None:
        await self.outbox.send(orjson.dumps(frame).decode())

    async def send_error(self, echo: Frame, exc: BaseException) -> None:
        error = _as_error(exc)
        await self.send({"op": "error", **echo, "code": error.code, "message": error.message})

    async def write(self, frames: MemoryObjectReceiveStream[str]) -> None:
        """The only writer to the socket; a client that stops reading is dropped."""
        try:
            async for frame in frames:
                with anyio.fail_after(self.state.settings.send_timeout):
                    await self.websocket.send_text(frame)
        except TimeoutError:
            logger.info("dropped a stalled WebSocket client", extra={"action": "send_timeout"})
        except WebSocketDisconnect:
            pass
        self.end(None)

    async def end_on_shutdown(self) -> None:
        await self.state.lifecycle.shutting_down.wait()
        self.end(GOING_AWAY)

    async def receive(self) -> None:
        """Handle client frames in order until the client disconnects."""
        while True:
            message = await self.websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            await self.dispatch(message.get("text"))

    async def dispatch(self, text: str | None) -> None:
        """Run one frame's op; any problem becomes an error frame naming its `ref` or `id`."""
        echo: Frame = {}
        try:
            frame = _parse(text)
            name = frame.get("op")
            if not isinstance(name, str):
                raise FrameError("invalid_frame", "op must be a string")
            op = OPS.get(name)
            if op is None:
                raise FrameError("unknown_op", f"op must be one of: {', '.join(OPS)}")
            if op.echo is not None and op.echo in frame and _is_scalar(frame[op.echo]):
                echo[op.echo_as or op.echo] = frame[op.echo]
            unknown = sorted(set(frame) - op.fields - {"op"})
            if unknown:
                raise FrameError(
                    "invalid_frame", f"{name} has unknown field(s): {', '.join(unknown)}"
                )
            await op.handle(self, frame)
        except REPORTED as exc:
            await self.send_error(echo, exc)

    async def subscribe(self, frame: Frame) -> None:
        """Validate here, so errors come back at once; the task announces `subscribed`."""
        sub = self._new_id(frame)
        patterns = parse_patterns([_required(frame, "topic")])
        after = parse_after(frame.get("after"))
        flt = compile_filter(frame.get("filter"))
        scope = self.subscriptions[sub] = anyio.CancelScope()
        self.tasks.start_soon(self._run_subscription, sub, scope, patterns, after, flt)

    async def unsubscribe(self, frame: Frame) -> None:
        """No event of `id` follows `unsubscribed`: its task can no longer reach the outbox."""
        sub = _sub_id(frame)
        scope = self.subscriptions.pop(sub, None)
        if scope is None:
            raise FrameError("unknown_id", "no active subscription has this id")
        scope.cancel()
        await self.send({"op": "unsubscribed", "id": sub})

    async def publish(self, frame: Frame) -> None:
        """Commit one event, then acknowledge with its envelope under the client's `ref`."""
        ref = _required(frame, "ref")
        if not _is_scalar(ref):
            raise FrameError("invalid_frame", "ref must be a JSON scalar")
        engine = self.state.engine
        event = engine.event(
            _required(frame, "topic"),
            _required(frame, "data"),
            type=frame.get("type"),
            key=frame.get("key"),
        )
        published = await engine.publish_many([event])
        self.state.metrics.published.inc(len(published))
        body = b'{"op":"published","ref":%s,"events":%s}' % (
            orjson.dumps(ref),
            envelopes_json(published),
        )
        await self.outbox.send(body.decode())

    async def ping(self, _frame: Frame) -> None:
        await self.send({"op": "pong"})

    async def consume(self, frame: Frame) -> None:
        """Start a queue consumer under a subscription id; `unsubscribe` stops it and
        returns its unsettled messages to the queue at once (as does disconnecting)."""
        sub = self._new_id(frame)
        queue = validate_queue(_required(frame, "queue"))
        prefetch = integer(frame.get("prefetch", 1), "prefetch", 1, MAX_PREFETCH)
        lease = number(frame.get("lease", 30), "lease", 0.1, MAX_LEASE_SECONDS)
        scope = self.subscriptions[sub] = anyio.CancelScope()
        self.tasks.start_soon(self._run_consumer, sub, scope, queue, prefetch, lease)

    async def ack(self, frame: Frame) -> None:
        delivery = self._delivery(frame)
        try:
            await delivery.ack()
        finally:
            self.held.pop(str(delivery.id), None)
        await self.send({"op": "acked", "message": str(delivery.id)})

    async def nack(self, frame: Frame) -> None:
        delivery = self._delivery(frame)
        delay = frame.get("delay")
        error = frame.get("error")
        if delay is not None:
            delay = number(delay, "delay", 0, MAX_DELAY_SECONDS)
        if error is not None and not isinstance(error, str):
            raise FrameError("invalid_frame", "error must be a string")
        try:
            moved = await delivery.nack(delay=delay, error=error and error[:4000])
        finally:
            self.held.pop(str(delivery.id), None)
        await self.send({"op": "nacked", "message": str(delivery.id), "state": moved.state})

    async def extend(self, frame: Frame) -> None:
        delivery = self._delivery(frame)
        seconds = number(_required(frame, "seconds"), "seconds", 0.1, MAX_LEASE_SECONDS)
        until = await delivery.extend(seconds)
        await self.send(
            {"op": "extended", "message": str(delivery.id), "lease_until": format_time(until)}
        )

    def _new_id(self, frame: Frame) -> SubId:
        sub = _sub_id(frame)
        if sub in self.subscriptions:
            raise FrameError("duplicate_id", "a subscription with this id is active")
        if len(self.subscriptions) >= MAX_SUBSCRIPTIONS:
            raise FrameError(
                "too_many_subscriptions", f"at most {MAX_SUBSCRIPTIONS} per connection"
            )
        return sub

    def _delivery(self, frame: Frame) -> Delivery:
        message = str(_required(frame, "message"))
        held = self.held.get(message)
        if held is None:
            raise FrameError("unknown_message", "this connection holds no message with this id")
        return held[1]

    async def _run_consumer(
        self, sub: SubId, scope: anyio.CancelScope, queue: str, prefetch: int, lease: float
    ) -> None:
        sub_json = orjson.dumps(sub)
        with scope:
            try:
                async with consume(
                    self.state.engine.queues, queue, prefetch=prefetch, lease=lease
                ) as deliveries:
                    await self.send({"op": "subscribed", "id": sub})
                    async for delivery in deliveries:
                        self.held[str(delivery.id)] = (sub, delivery)
                        body = delivery.message.to_json()
                        await self.outbox.send(
                            (b'{"op":"message","sub":' + sub_json + b"," + body[1:]).decode()
                        )
            except DB_DOWN as exc:
                await self.send_error({"id": sub}, exc)
            finally:
                for key in [k for k, (owner, _) in self.held.items() if owner == sub]:
                    del self.held[key]
                if self.subscriptions.get(sub) is scope:
                    del self.subscriptions[sub]

    async def _run_subscription(
        self,
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
                await self._follow(sub, patterns, after, flt)
                self.end(GOING_AWAY)
            except DB_DOWN as exc:
                await self.send_error({"id": sub}, exc)
            finally:
                if self.subscriptions.get(sub) is scope:
                    del self.subscriptions[sub]

    async def _follow(
        self, sub: SubId, patterns: tuple[Pattern, ...], after: str | int, flt: Filter | None
    ) -> None:
        """`subscribed` once the start is fixed, then events; resets in-band like SSE."""
        sub_json = orjson.dumps(sub)
        announced = False

        async def announce() -> None:
            nonlocal announced
            if not announced:
                announced = True
                await self.send({"op": "subscribed", "id": sub})

        metrics = self.state.metrics
        while True:
            try:
                async with self.state.engine.subscription(patterns, after, flt) as (_, events):
                    await announce()
                    async for event in events:
                        await self.outbox.send(ws_event_frame(sub_json, event).decode())
                        metrics.delivered_event("ws", event)
                return
            except CursorExpired as exc:
                await announce()
                await self.send({"op": "reset", "sub": sub, **reset_payload(exc)})
                after = EARLIEST


Handler = Callable[[Connection, Frame], Awaitable[None]]


@dataclass(frozen=True)
class Op:
    """A client op: its handler, the field echoed in its error frames, its allowed fields."""

    handle: Handler
    echo: str | None
    fields: frozenset[str]
    echo_as: str | None = None
    """Key of the echoed field in error frames when it differs (`message` is taken there)."""


OPS: dict[str, Op] = {
    "subscribe": Op(Connection.subscribe, "id", frozenset({"id", "topic", "after", "filter"})),
    "unsubscribe": Op(Connection.unsubscribe, "id", frozenset({"id"})),
    "publish": Op(Connection.publish, "ref", frozenset({"ref", "topic", "data", "type", "key"})),
    "ping": Op(Connection.ping, None, frozenset()),
    "consume": Op(Connection.consume, "id", frozenset({"id", "queue", "prefetch", "lease"})),
    "ack": Op(Connection.ack, "message", frozenset({"message"}), "message_id"),
    "nack": Op(Connection.nack, "message", frozenset({"message", "delay", "error"}), "message_id"),
    "extend": Op(Connection.extend, "message", frozenset({"message", "seconds"}), "message_id"),
}
