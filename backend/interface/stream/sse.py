"""Server-Sent Events responses for subscriptions and queue consumers.

An event subscription gets the lean response of `sse_live` (one task per connection,
timers shared per process). Queue consumers use sse-starlette, which runs the socket
writer, heartbeat comments, the send timeout and client-disconnect detection, fed by a
producer task (`sse_response`) because a delivery's lease must be taken before it is
written. Either way the farewell on shutdown or token expiry is a comment, so clients
reconnect elsewhere.

Each stream holds one of the process's MAX_CONNECTIONS slots (503 when none is free) and
ends when the token that opened it expires, so a revoked client cannot listen forever.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from sse_starlette import EventSourceResponse
from sse_starlette.sse import SendTimeoutError
from starlette.types import Receive, Scope, Send

from backend.core.concurrency import first_to_finish, unwrap_single_error
from backend.core.errors import TooManyConnections
from backend.core.filters import Filter
from backend.core.names import Pattern
from backend.interface.http.errors import DB_DOWN
from backend.interface.server.state import AppState
from backend.interface.stream.encoding import sse_comment, sse_retry
from backend.interface.stream.session import Session, farewell_due, until_farewell
from backend.interface.stream.slots import acquire_slot
from backend.interface.stream.sse_live import DB_DOWN_COMMENT, LiveEventStream

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


Pump = Callable[[MemoryObjectSendStream[bytes]], Awaitable[None]]


def _too_many(state: AppState) -> TooManyConnections:
    return TooManyConnections(
        f"this server holds its limit of {state.guard.slots.limit} streaming connections; "
        "retry later"
    )


def _respond(
    state: AppState,
    body: AsyncIterator[bytes],
    sender: Callable[[], Coroutine[None, None, None]],
    source: MemoryObjectReceiveStream[bytes] | None = None,
) -> EventStream:
    """The response around `body`, releasing its streaming slot when it ends."""
    settings = state.settings
    slots = state.guard.slots
    try:
        response = EventStream(
            body,
            ping=settings.heartbeat_seconds,
            send_timeout=settings.send_timeout,
            data_sender_callable=sender,
            shutdown_grace_period=SHUTDOWN_GRACE_SECONDS,
            headers={"Cache-Control": "no-store"},
        )
    except BaseException:
        slots.release()
        raise
    response.on_close = slots.release
    response.source = source
    return response


async def sse_response(state: AppState, pump: Pump, expires_at: float | None) -> EventStream:
    """An SSE response fed by `pump` through a small buffer (queue consumers).

    Retry hint, heartbeats and a clean shutdown; raises TooManyConnections (503) when every
    streaming slot is taken, once those of clients that have left are reclaimed.
    """
    if not await acquire_slot(state):
        raise _too_many(state)
    send, receive = anyio.create_memory_object_stream[bytes](WRITER_BUFFER)
    settings = state.settings
    stopping = state.lifecycle.shutting_down

    async def until_ending() -> None:
        await until_farewell(stopping, expires_at)

    async def produce() -> None:
        state.metrics.connections.labels("sse").inc()
        try:
            with send:
                await send.send(sse_retry(settings.sse_retry_ms))
                try:
                    with unwrap_single_error():
                        await first_to_finish(lambda: pump(send), until_ending)
                except DB_DOWN:
                    with anyio.move_on_after(1):
                        await send.send(sse_comment(DB_DOWN_COMMENT))
                    return
                farewell = farewell_due(stopping, expires_at)
                if farewell is not None:
                    with anyio.move_on_after(SHUTDOWN_GRACE_SECONDS / 2):
                        await send.send(sse_comment(farewell.value))
        finally:
            state.metrics.connections.labels("sse").dec()

    return _respond(state, _coalesced(receive), produce, receive)


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


async def event_stream(
    state: AppState,
    patterns: tuple[Pattern, ...],
    after: str | int,
    flt: Filter | None,
    expires_at: float | None,
) -> LiveEventStream:
    """The SSE response for an already validated and authorized subscription request."""
    if not await acquire_slot(state):
        raise _too_many(state)
    return LiveEventStream(state, Session(state.engine, patterns, after, flt), expires_at)
