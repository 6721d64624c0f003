"""Server-Sent Events responses for subscriptions.

The response (sse-starlette) runs the socket writer, heartbeat comments, the send timeout
and client-disconnect detection. Our producer task owns the subscription and feeds the
writer through a small bounded stream; it turns `CursorExpired` into an in-band
`pgcast.reset` event and continues from the oldest retained event, and on shutdown it
sends a final comment and ends the stream so clients reconnect elsewhere.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import anyio
from anyio.streams.memory import MemoryObjectSendStream
from sse_starlette import EventSourceResponse
from sse_starlette.sse import SendTimeoutError
from starlette.types import Receive, Scope, Send

from backend.core.concurrency import first_to_finish, unwrap_single_error
from backend.core.errors import CursorExpired
from backend.core.filters import Filter
from backend.core.names import Pattern
from backend.interface.encoding import sse_comment, sse_frame, sse_reset, sse_retry
from backend.interface.errors import DB_DOWN
from backend.interface.state import AppState
from backend.services.subscribe import EARLIEST

logger = logging.getLogger(__name__)

WRITER_BUFFER = 64
SHUTDOWN_GRACE_SECONDS = 1.0


class EventStream(EventSourceResponse):
    """An SSE response whose send timeout is a normal way to end, not a server error."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except SendTimeoutError:
            logger.info("closed a stalled SSE client", extra={"action": "send_timeout"})
        finally:
            close = getattr(self.body_iterator, "close", None)
            if close is not None:
                close()


async def _pump(
    state: AppState,
    send: MemoryObjectSendStream[bytes],
    patterns: tuple[Pattern, ...],
    after: str | int,
    flt: Filter | None,
) -> None:
    """Subscription → writer, resetting in-band when the resume point is gone."""
    metrics = state.metrics
    while True:
        try:
            async with state.engine.subscription(patterns, after, flt) as (_, events):
                async for event in events:
                    await send.send(sse_frame(event))
                    metrics.delivered_event("sse", event)
            return
        except CursorExpired as exc:
            await send.send(sse_reset(exc))
            after = EARLIEST


Pump = Callable[[MemoryObjectSendStream[bytes]], Awaitable[None]]


def sse_response(state: AppState, pump: Pump) -> EventStream:
    """An SSE response fed by `pump`, with retry hint, heartbeats and a clean shutdown."""
    send, receive = anyio.create_memory_object_stream[bytes](WRITER_BUFFER)
    settings = state.settings
    lifecycle = state.lifecycle

    async def produce() -> None:
        state.metrics.connections.labels("sse").inc()
        try:
            with send:
                await send.send(sse_retry(settings.sse_retry_ms))
                try:
                    with unwrap_single_error():
                        await first_to_finish(lambda: pump(send), lifecycle.shutting_down.wait)
                except DB_DOWN:
                    with anyio.move_on_after(1):
                        await send.send(sse_comment("database unavailable; reconnect"))
                    return
                if lifecycle.shutting_down.is_set():
                    with anyio.move_on_after(SHUTDOWN_GRACE_SECONDS / 2):
                        await send.send(sse_comment("server shutting down; reconnect"))
        finally:
            state.metrics.connections.labels("sse").dec()

    return EventStream(
        receive,
        ping=settings.heartbeat_seconds,
        send_timeout=settings.send_timeout,
        data_sender_callable=produce,
        shutdown_grace_period=SHUTDOWN_GRACE_SECONDS,
        headers={"Cache-Control": "no-store"},
    )


def event_stream(
    state: AppState, patterns: tuple[Pattern, ...], after: str | int, flt: Filter | None
) -> EventStream:
    """The SSE response for an already validated subscription request."""
    return sse_response(state, lambda send: _pump(state, send, patterns, after, flt))
