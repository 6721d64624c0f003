"""The WebSocket transport: many subscriptions and publishes over one socket (`pgcast.v1`).

Frames are JSON text. The receiver loop handles client frames one at a time through the
`OPS` table, so a client's publishes commit in the order it sent them; a bad frame gets
an `error` frame and the socket stays open. Each subscription runs in its own task under
its own cancel scope, so `unsubscribe` stops just that one. `subscribed` is sent once the
start position is fixed, so anything published after the client sees it is delivered.

Every task writes its own frames to the socket under the connection's send lock, so a
subscription's events go out from the task that took them from its buffer, with no hop
through a writer task; frames from one write stay together and in order. A slow client
holds its subscriptions back (the hub then moves them to catch-up, so memory stays bounded
and nothing is lost), and a client that accepts nothing for SEND_TIMEOUT is dropped
without a close frame, because a close frame could not get through either. It resumes by
subscribing again with `after` set to the last id it saw.

Close codes: 1001 when the server shuts down (or its engine stops), 1011 on an internal
error; uvicorn closes with 1009 a frame over WS_MAX_FRAME_BYTES. A handshake offering
only other subprotocols is refused with HTTP 403.

Access (docs/security.md): a handshake from a foreign `Origin` is refused with HTTP 403 and
one carrying a bad token (header or `?token=`) with HTTP 401. Without any token, the
first frame must be `auth`; anything else, no `auth` within AUTH_TIMEOUT_SECONDS, or the
token expiring closes the socket with 1008. Every op is checked against the token. A full
server (MAX_CONNECTIONS) accepts and closes at once with 1013.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import anyio
import orjson
from anyio.abc import TaskGroup
from starlette.websockets import WebSocket, WebSocketDisconnect

from backend.core.concurrency import unwrap_single_error
from backend.core.errors import (
    CursorExpired,
    DatabaseUnavailable,
    Forbidden,
    PgcastError,
    RateLimited,
    Unauthorized,
)
from backend.core.filters import Filter, compile_filter
from backend.core.names import Pattern, parse_patterns, validate_name
from backend.entities.event import format_time
from backend.interface.http.errors import DB_DOWN, error_response
from backend.interface.http.inputs import parse_after
from backend.interface.security.access import principal_of, rate_key, spend
from backend.interface.security.auth import Permission, Principal
from backend.interface.server.state import AppState
from backend.interface.stream.encoding import envelopes_json, reset_payload, ws_event_frame
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
MAX_PREFETCH = 100
WATCHDOG_CHECKS = 4  # a stalled client is dropped within 1.25 x SEND_TIMEOUT
CLOSE_TIMEOUT = 1.0
AUTH_TIMEOUT_SECONDS = 10.0
GOING_AWAY = 1001
POLICY_VIOLATION = 1008
INTERNAL_ERROR = 1011
TRY_AGAIN_LATER = 1013

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
    """GET /ws: check origin and credentials, negotiate `pgcast.v1`, serve frames, close."""
    state = AppState.of(websocket)
    guard = state.guard
    offered: list[str] = websocket.scope.get("subprotocols") or []
    if offered and SUBPROTOCOL not in offered:
        await websocket.close(1002)  # before accept, so uvicorn answers HTTP 403
        return
    if not guard.origins.allows(websocket.headers.get("origin"), websocket.headers.get("host")):
        await _refuse(websocket, Forbidden("this origin may not open a WebSocket here"))
        return
    try:
        principal = principal_of(websocket)
    except Unauthorized as exc:
        await _refuse(websocket, exc)
        return
    subprotocol = SUBPROTOCOL if offered else None
    if not guard.slots.acquire():
        await websocket.accept(subprotocol)
        with contextlib.suppress(WebSocketDisconnect), anyio.move_on_after(CLOSE_TIMEOUT):
            await websocket.close(TRY_AGAIN_LATER, "too many connections; retry later")
        return
    gauge = state.metrics.connections.labels("ws")
    gauge.inc()
    try:
        with state.lifecycle.stream():
            await websocket.accept(subprotocol)
            try:
                code, reason = await _session(websocket, state, principal)
            except Exception:
                logger.exception("WebSocket session failed", extra={"action": "ws_error"})
                code, reason = INTERNAL_ERROR, ""
            if code is not None:
                with contextlib.suppress(WebSocketDisconnect), anyio.move_on_after(CLOSE_TIMEOUT):
                    await websocket.close(code, reason)
    finally:
        gauge.dec()
        guard.slots.release()


async def _refuse(websocket: WebSocket, exc: PgcastError) -> None:
    """Refuse the handshake with the JSON error and its status, where the server can."""
    if "websocket.http.response" in (websocket.scope.get("extensions") or {}):
        await websocket.send_denial_response(error_response(exc))
    else:
        await websocket.close(POLICY_VIOLATION)


async def _session(
    websocket: WebSocket, state: AppState, principal: Principal | None
) -> tuple[int | None, str]:
    """Run the connection until it ends; returns the close code to send, if any."""
    with unwrap_single_error():
        async with anyio.create_task_group() as tasks:
            connection = Connection(websocket, state, tasks, principal)
            tasks.start_soon(connection.watch)
            tasks.start_soon(connection.watch_credentials)
            await connection.receive()
            connection.end(None)
    return connection.close_code, connection.close_reason


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


def _is_auth_frame(text: str | None) -> bool:
    try:
        frame = orjson.loads(text) if text is not None else None
    except orjson.JSONDecodeError:
        return False
    return isinstance(frame, dict) and frame.get("op") == "auth"


def _as_error(exc: BaseException) -> PgcastError:
    """A REPORTED failure as a typed error: a lost database link becomes DatabaseUnavailable."""
    if isinstance(exc, PgcastError):
        return exc
    return DatabaseUnavailable(f"the database is unavailable: {exc}")


@dataclass(eq=False)
class Connection:
    """One socket: its subscriptions, the task group they run in and its send lock."""

    websocket: WebSocket
    state: AppState
    tasks: TaskGroup
    principal: Principal | None
    """Who the socket acts for; None until an `auth` frame when the handshake had no token."""
    subscriptions: dict[SubId, anyio.CancelScope] = field(default_factory=dict)
    held: dict[str, tuple[SubId, Delivery]] = field(default_factory=dict)
    close_code: int | None = None
    close_reason: str = ""
    authenticated: anyio.Event = field(default_factory=anyio.Event)
    sending: anyio.Lock = field(default_factory=lambda: anyio.Lock(fast_acquire=True))
    writing: bool = False
    progress_at: float = 0.0

    def end(self, code: int | None, reason: str = "") -> None:
        """Stop the whole connection; the first reason wins. None: send no close frame."""
        if not self.tasks.cancel_scope.cancel_called:
            self.close_code = code
            self.close_reason = reason
            self.tasks.cancel_scope.cancel()

    async def send(self, frame: Frame) -> None:
        await self.write([orjson.dumps(frame).decode()])

    async def send_error(self, echo: Frame, exc: BaseException) -> None:
        error = _as_error(exc)
        frame = {"op": "error", **echo, "code": error.code, "message": error.message}
        if isinstance(error, RateLimited):
            frame["retry_after"] = error.retry_after
        await self.send(frame)

    async def watch_credentials(self) -> None:
        """Close with 1008 when no `auth` arrives in time, and when the token expires."""
        if self.principal is None:
            with anyio.move_on_after(AUTH_TIMEOUT_SECONDS):
                await self.authenticated.wait()
        if self.principal is None:
            self.end(POLICY_VIOLATION, "no auth frame in time")
            return
        expires_at = self.principal.expires_at
        if expires_at is not None:
            await anyio.sleep(max(0.0, expires_at - time.time()))
            self.end(POLICY_VIOLATION, "token expired")

    def allow(self, permission: Permission, *names: str) -> Principal:
        """The socket's principal, if it is still valid and grants `permission` on `names`."""
        principal = self.principal
        assert principal is not None, "dispatch lets no op but auth through unauthenticated"
        if principal.expired(time.time()):
            raise Unauthorized("the token has expired")
        principal.check(permission, *names)
        return principal

    async def write(self, frames: Iterable[str]) -> None:
        """Send `frames` together and in order, under the send lock.

        `frames` may be a generator, so a long batch is encoded one frame at a time as it
        goes out. Each frame sent counts as progress for `watch`; after a disconnect
        the connection ends and the caller is cancelled at its next await.
        """
        async with self.sending:
            self.progress_at = time.monotonic()
            self.writing = True
            try:
                for frame in frames:
                    await self.websocket.send_text(frame)
                    self.progress_at = time.monotonic()
            except WebSocketDisconnect:
                self.end(None)
            finally:
                self.writing = False

    async def watch(self) -> None:
        """Close with 1001 when the server shuts down; drop a client whose socket accepted
        nothing for SEND_TIMEOUT during a write.

        One watchdog task per connection instead of a timeout scope around every write: a
        scope costs more than the send itself on a busy fan-out. A dropped client gets no
        close frame, because it could not get through either.
        """
        timeout = self.state.settings.send_timeout
        stopping = self.state.lifecycle.shutting_down
        while True:
            with anyio.move_on_after(timeout / WATCHDOG_CHECKS):
                await stopping.wait()
            if stopping.is_set():
                self.end(GOING_AWAY)
                return
            if self.writing and time.monotonic() - self.progress_at >= timeout:
                logger.info("dropped a stalled WebSocket client", extra={"action": "send_timeout"})
                self.end(None)
                return

    async def receive(self) -> None:
        """Handle client frames in order until the client disconnects."""
        while True:
            message = await self.websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            await self.dispatch(message.get("text"))

    async def dispatch(self, text: str | None) -> None:
        """Run one frame's op; any problem becomes an error frame naming its `ref` or `id`."""
        if self.principal is None and not _is_auth_frame(text):
            self.end(POLICY_VIOLATION, 'authentication required: send {"op":"auth"} first')
            return
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
        self.allow(Permission.SUBSCRIBE, patterns[0].text)
        after = parse_after(frame.get("after"))
        flt = compile_filter(frame.get("filter"))
        scope = self.subscriptions[sub] = anyio.CancelScope()
        self.tasks.start_soon(self._run_subscription, sub, scope, patterns, after, flt)

    async def unsubscribe(self, frame: Frame) -> None:
        """No event of `id` follows `unsubscribed`: its task is cancelled before this writes,
        and frames it was writing are ahead of it in the send lock."""
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
        topic = validate_name(_required(frame, "topic"), "topic")
        principal = self.allow(Permission.PUBLISH, topic)
        spend(self.state.guard.limiter, rate_key(principal, self.websocket))
        engine = self.state.engine
        event = engine.event(
            topic,
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
        await self.write([body.decode()])

    async def ping(self, _frame: Frame) -> None:
        await self.send({"op": "pong"})

    async def auth(self, frame: Frame) -> None:
        """Authenticate a socket opened without a token; answered with `authed`.

        A bad token gets an `unauthorized` error frame and the socket stays
        unauthenticated. Servers without auth answer `authed` and ignore the token.
        """
        token = _required(frame, "token")
        if not isinstance(token, str):
            raise FrameError("invalid_frame", "token must be a string")
        guard = self.state.guard
        if not guard.enabled:
            await self.send({"op": "authed", "sub": None, "expires": None})
            return
        if self.principal is not None:
            raise FrameError("invalid_frame", "this connection is already authenticated")
        principal = guard.verify(token)
        self.principal = principal
        self.authenticated.set()
        expires = principal.expires_at or time.time()
        await self.send({"op": "authed", "sub": principal.subject, "expires": _wall_time(expires)})

    async def consume(self, frame: Frame) -> None:
        """Start a queue consumer under a subscription id; `unsubscribe` stops it and
        returns its unsettled messages to the queue at once (as does disconnecting)."""
        sub = self._new_id(frame)
        queue = validate_queue(_required(frame, "queue"))
        self.allow(Permission.CONSUME, queue)
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
        limit = self.state.settings.max_subscriptions
        if len(self.subscriptions) >= limit:
            raise FrameError("too_many_subscriptions", f"at most {limit} per connection")
        return sub

    def _delivery(self, frame: Frame) -> Delivery:
        """A message this socket holds, on a queue the token (still) lets it consume."""
        self.allow(Permission.CONSUME)
        message = str(_required(frame, "message"))
        held = self.held.get(message)
        if held is None:
            raise FrameError("unknown_message", "this connection holds no message with this id")
        delivery = held[1]
        self.allow(Permission.CONSUME, delivery.message.queue)
        return delivery

    async def _run_consumer(
        self, sub: SubId, scope: anyio.CancelScope, queue: str, prefetch: int, lease: float
    ) -> None:
        sub_json = orjson.dumps(sub)
        with scope:
            try:
                async with consume(
                    self.state.engine.queues,
                    queue,
                    prefetch=prefetch,
                    lease=lease,
                    marks_delivered=True,
                ) as deliveries:
                    await self.send({"op": "subscribed", "id": sub})
                    async for delivery in deliveries:
                        self.held[str(delivery.id)] = (sub, delivery)
                        await self.write(_message_frame(sub_json, delivery))
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
                async with (
                    self.state.engine.subscription(patterns, after, flt) as (subscription, _),
                    aclosing(subscription.batches()) as batches,
                ):
                    await announce()
                    async for batch in batches:
                        await self.write(
                            ws_event_frame(sub_json, event).decode() for event in batch
                        )
                        metrics.delivered("ws", batch)
                return
            except CursorExpired as exc:
                await announce()
                await self.send({"op": "reset", "sub": sub, **reset_payload(exc)})
                after = EARLIEST


def _message_frame(sub_json: bytes, delivery: Delivery) -> Iterator[str]:
    """The `message` frame, made when `write` is about to send it: from then on the
    message counts as delivered; a consumer stopped before that gives it back unused."""
    delivery.delivered = True
    body = delivery.message.to_json()
    yield (b'{"op":"message","sub":' + sub_json + b"," + body[1:]).decode()


def _wall_time(timestamp: float) -> str:
    return format_time(datetime.fromtimestamp(timestamp, UTC))


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
    "auth": Op(Connection.auth, None, frozenset({"token"})),
}
