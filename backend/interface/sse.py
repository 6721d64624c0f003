"""Server-Sent Events responses for subscriptions.

The response (sse-starlette) runs the socket writer, heartbeat comments, the send timeout
and client-disconnect detection. Our producer task owns the subscription and feeds the
writer through a small bounded stream; it turns `CursorExpired` into an in-band
`pgcast.reset` event and continues from the oldest retained event, and on shutdown it
sends a final comment and ends the stream so clients reconnect elsewhere.

Each stream holds one of the process's MAX_CONNECTIONS slots (503 when none is free) and
ends when the token that opened it expires, so a revoked client cannot listen forever.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from sse_starlette import EventSourceResponse
from sse_starlette.sse import SendTimeoutError
from starlette.types import Receive, Scope, Send

from backend.core.concurrency import first_to_finish, unwrap_single_error
from backend.core.errors import CursorExpired, TooManyConnections
from backend.core.filters import Filter
from backend.core.names import Pattern
from backend.interface.encoding import sse_comment, sse_frame, sse_reset, sse_retry
from backend.interface.errors import DB_DOWN
from backend.interface.state import AppState
from backend.services.subscribe import EARLIEST

logger = logging.getLogger(__name__)

WRITER_BUFFER = 64
COALESCE_FRAMES = 64
COALESCE_BYTES = 64 * 1024
SHUTDOWN_GRACE_SECONDS = 1.0


class EventStream(EventSourceResponse):
    """An SSE response whose send timeout is a normal way to end, not a server error.

    `on_close` runs once the response is over, whichever way it ended (frees the slot).
    """

    on_close: Callable[[], None] | None = None
    source: MemoryObjectReceiveStream[bytes] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except SendTimeoutError:
            logger.info("closed a stalled SSE client", extra={"action": "send_timeout"})
        finally:
            if self.source is not None:
                self.source.close()
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                with anyio.move_on_after(1, shield=True):
                    await aclose()
            if self.on_close is not None:
                self.on_close()


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
                    frame = sse_frame(event)
                    try:
                        send.send_nowait(frame)
                    except anyio.WouldBlock:
                        await send.send(frame)
                    metrics.delivered_event("sse", event)
            return
        except CursorExpired as exc:
            await send.send(sse_reset(exc))
            after = EARLIEST


Pump = Callable[[MemoryObjectSendStream[bytes]], Awaitable[None]]


async def _until(deadline: float | None) -> None:
    """Sleep until the wall-clock `deadline` (forever when None)."""
    if deadline is None:
        await anyio.sleep_forever()
    else:
        # The event loop's clock may wake a hair early against the wall clock: sleep again
        # until the deadline has really passed, so the caller's expiry check agrees.
        while time.time() < deadline:  # noqa: ASYNC110 - waiting on a clock, not an event
            await anyio.sleep(max(0.001, deadline - time.time()))


def sse_response(state: AppState, pump: Pump, expires_at: float | None) -> EventStream:
    """An SSE response fed by `pump`, with retry hint, heartbeats and a clean shutdown.

    Raises TooManyConnections (503) when every streaming slot is taken.
    """
    slots = state.guard.slots
    if not slots.acquire():
        raise TooManyConnections(
            f"this server holds its limit of {slots.limit} streaming connections; retry later"
        )
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
                        await first_to_finish(
                            lambda: pump(send),
                            lifecycle.shutting_down.wait,
                            lambda: _until(expires_at),
                        )
                except DB_DOWN:
                    with anyio.move_on_after(1):
                        await send.send(sse_comment("database unavailable; reconnect"))
                    return
                if expires_at is not None and time.time() >= expires_at:
                    with anyio.move_on_after(1):
                        await send.send(sse_comment("token expired"))
                    return
                if lifecycle.shutting_down.is_set():
                    with anyio.move_on_after(SHUTDOWN_GRACE_SECONDS / 2):
                        await send.send(sse_comment("server shutting down; reconnect"))
        finally:
            state.metrics.connections.labels("sse").dec()

    try:
        response = EventStream(
            _coalesced(receive),
            ping=settings.heartbeat_seconds,
            send_timeout=settings.send_timeout,
            data_sender_callable=produce,
            shutdown_grace_period=SHUTDOWN_GRACE_SECONDS,
            headers={"Cache-Control": "no-store"},
        )
    except BaseException:
        slots.release()
        raise
    response.on_close = slots.release
    response.source = receive
    return response


async def _coalesced(frames: MemoryObjectReceiveStream[bytes]) -> AsyncIterator[bytes]:
    """Everything already queued leaves in one write: far fewer sends when a client is
    behind or a burst arrives, the same bytes in the same order."""
    async for first in frames:
        chunks = [first]
        size = len(first)
        # Bounded in bytes too: a stalled client holds at most one such chunk in flight.
        while len(chunks) < COALESCE_FRAMES and size < COALESCE_BYTES:
            try:
                chunk = frames.receive_nowait()
            except (anyio.WouldBlock, anyio.EndOfStream):
                break
            chunks.append(chunk)
            size += len(chunk)
        yield b"".join(chunks)


def event_stream(
    state: AppState,
    patterns: tuple[Pattern, ...],
    after: str | int,
    flt: Filter | None,
    expires_at: float | None,
) -> EventStream:
    """The SSE response for an already validated and authorized subscription request."""
    return sse_response(state, lambda send: _pump(state, send, patterns, after, flt), expires_at)
