"""The SSE response of an event subscription: a plain ASGI response on the request's task.

A topic subscription is the one stream that many idle clients hold open, so it runs with
nothing of its own but this small object and the request task uvicorn already has: no task
group, no writer/ping/disconnect tasks, no timeout scope per write. The task iterates the
subscription's session (`stream.session.Session`) and writes each batch of pre-encoded
frames as it comes; the process's `SseSweep` pokes it when a heartbeat is due (it then
checks that the client is still there and writes a comment), drops a client whose write
makes no progress, and ends the session on shutdown or token expiry, after which the task
writes the farewell comment itself. A resume point that is gone becomes an in-band
`pgcast.reset` event. Once its headers are out the response parks its body with
`handoff.StreamHandoff`, so no framework frame stays alive while it is open and no
middleware wraps its writes. Then, under pgcast's own server, the stream is also its
session's sink: while the task waits for events, the hub writes them into the response
itself (`protocols.chunk_writer`), so a live event costs no task switch per subscriber,
and a closed or stalled connection ends the session (`LiveStream.lost`, `stalled`) with no
cancel scope per stream. docs/performance.md has the measurements behind this design.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import aclosing, nullcontext
from datetime import UTC, datetime
from functools import partial

import anyio
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from backend.core.errors import CursorExpired
from backend.entities.event import Event
from backend.interface.http.errors import DB_DOWN
from backend.interface.server.protocols import chunk_writer, on_connection_lost
from backend.interface.server.state import AppState
from backend.interface.stream.encoding import (
    WRITE_BYTES,
    sse_comment,
    sse_frame,
    sse_reset,
    sse_retry,
)
from backend.interface.stream.handoff import park
from backend.interface.stream.session import Farewell, Item, Session
from backend.interface.stream.sse_sweep import LiveStream

DB_DOWN_COMMENT = "database unavailable; reconnect"
HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-store"),
    (b"connection", b"keep-alive"),
    (b"x-accel-buffering", b"no"),
]
START = {"type": "http.response.start", "status": 200, "headers": HEADERS}
NOT_CANCELLABLE = nullcontext()
"""Under pgcast's server a stream needs no cancel scope of its own (`LiveStream.stalled`)."""
END = {"type": "http.response.body", "body": b"", "more_body": False}


def heartbeat_comment() -> bytes:
    """`: ping - <UTC timestamp>`, with the CRLF line ends the queue streams' library uses."""
    return b": ping - %s\r\n\r\n" % str(datetime.now(UTC)).encode()


def chunks(events: list[Event]) -> Iterator[bytes]:
    """The frames of `events` joined into writes of at most about WRITE_BYTES."""
    chunk: list[bytes] = []
    size = 0
    for event in events:
        frame = sse_frame(event)
        if chunk and size + len(frame) > WRITE_BYTES:
            yield b"".join(chunk)
            chunk, size = [], 0
        chunk.append(frame)
        size += len(frame)
    if chunk:
        yield b"".join(chunk)


async def client_gone(receive: Receive) -> bool:
    """Whether the client has disconnected, without waiting for it to."""
    with anyio.CancelScope() as probe:
        probe.cancel()
        while (await receive())["type"] != "http.disconnect":
            pass
        return True
    return False


class LiveEventStream(Response):
    """The response for one subscription; holds the slot taken for it until it ends.

    A Response only in type (routes return Responses): it sends its own start message and
    body, so none of Response's own state is set up.
    """

    def __init__(self, state: AppState, session: Session, expires_at: float | None) -> None:
        self.state = state
        self.session = session
        self.expires_at = expires_at

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Send the headers, then write the stream after the framework has unwound."""
        parked = False
        try:
            await self.session.open()  # the start is fixed before the client hears 200
            await send(START)
            if scope.get("method") == "HEAD":
                await send(END)
                return
            write = chunk_writer(scope)
            tally = self.state.metrics.tally("sse") if write is not None else None
            stream = LiveStream(self.session, self.expires_at, write, tally)
            on_connection_lost(scope, stream.lost)
            parked = park(scope, partial(self._run, stream))
            if not parked:
                parked = True
                await self._run(stream, receive, send)
        finally:
            if not parked:
                self.session.close()
                self.state.guard.slots.release()

    async def _run(self, stream: LiveStream, receive: Receive, send: Send) -> None:
        """Write the stream until it ends (then the goodbye, if any, and the end of the
        body) or its client leaves. The loop over the session is in this coroutine itself
        rather than in one it awaits: every open stream holds this frame while it waits."""
        state = self.state
        session = self.session
        try:
            if stream.write is not None:
                session.sink = stream.deliver
            gauge = state.metrics.connections.labels("sse")
            gauge.inc()
            state.sse.add(stream)
            try:
                with stream.cancel if stream.cancel is not None else NOT_CANCELLABLE:
                    await _write(stream, send, sse_retry(state.settings.sse_retry_ms))
                    gone = False
                    try:
                        async with aclosing(session.items()) as items:
                            async for item in items:
                                if not await self._write_item(stream, item, receive, send):
                                    gone = True
                                    break
                        farewell = session.farewell
                        gone = gone or farewell is Farewell.GONE
                        if not gone and farewell is not None:
                            await _write(stream, send, sse_comment(farewell.value))
                    except DB_DOWN:
                        await _write(stream, send, sse_comment(DB_DOWN_COMMENT))
                    if not gone:
                        await send(END)
            finally:
                session.sink = None
                state.sse.discard(stream)
                gauge.dec()
        finally:
            session.close()
            state.guard.slots.release()

    async def _write_item(
        self, stream: LiveStream, item: Item, receive: Receive, send: Send
    ) -> bool:
        """Write one item of the session (events, a reset, or a heartbeat when poked and
        due); False when the client turns out to have left."""
        heartbeat = self.state.settings.heartbeat_seconds
        poked = isinstance(item, list) and not item
        if poked or time.monotonic() - stream.probed_at >= heartbeat:
            if await client_gone(receive):
                return False
            stream.probed_at = time.monotonic()
        if isinstance(item, CursorExpired):
            await _write(stream, send, sse_reset(item))
        elif isinstance(item, list):
            if item:
                for chunk in chunks(item):
                    await _write(stream, send, chunk)
                self.state.metrics.delivered("sse", item)
            elif time.monotonic() - stream.written_at >= heartbeat:
                await _write(stream, send, heartbeat_comment())
        return True


async def _write(stream: LiveStream, send: Send, body: bytes) -> None:
    """One body message; the sweep drops the client when it makes no progress for
    SEND_TIMEOUT."""
    stream.writing = True
    stream.written_at = time.monotonic()
    try:
        await send({"type": "http.response.body", "body": body, "more_body": True})
    finally:
        stream.writing = False
        stream.written_at = time.monotonic()
