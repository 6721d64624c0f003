"""Raw asyncio clients: keep-alive HTTP/1.1 requests, SSE and WebSocket streams.

Hand-written so that the load generator costs as little CPU as possible: streams count
event frames with one `bytes.count` per read, and only "sampling" streams split frames
to read the send timestamp (`"ts"`) that publishers put into every event's `data`.
The same stream classes read pgcast and the raw ceiling server (`bench.ceiling`).
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, cast

HOST = "127.0.0.1"
SSE_MARK = b"\nid: "
WS_EVENT = b'{"op":"event"'
TS_KEY = b'"ts":'


def read_ts(frame: bytes, start: int = 0) -> float | None:
    """The float after `"ts":` in a frame, or None."""
    at = frame.find(TS_KEY, start)
    if at < 0:
        return None
    at += len(TS_KEY)
    end = at
    while end < len(frame) and frame[end] not in b",}":
        end += 1
    try:
        return float(frame[at:end])
    except ValueError:
        return None


# --- HTTP/1.1 requests -------------------------------------------------------------------


class HttpError(RuntimeError):
    """An unexpected HTTP status."""


class HttpConn:
    """One keep-alive HTTP/1.1 connection; one request at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int, host: str = HOST) -> HttpConn:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        head = f"{method} {path} HTTP/1.1\r\nHost: {HOST}\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self.writer.write(head.encode() + b"\r\n" + (body or b""))
        return await self._response()

    async def _response(self) -> tuple[int, bytes]:
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        lower = head.lower()
        at = lower.find(b"\r\ncontent-length:")
        if at >= 0:
            end = lower.index(b"\r\n", at + 2)
            length = int(lower[at + 17 : end])
            return status, await self.reader.readexactly(length)
        if b"\r\ntransfer-encoding: chunked" in lower:
            parts: list[bytes] = []
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).strip(), 16)
                chunk = await self.reader.readexactly(size + 2)
                if size == 0:
                    return status, b"".join(parts)
                parts.append(chunk[:-2])
        return status, b""

    async def expect(
        self, method: str, path: str, body: bytes | None, status: int | tuple[int, ...]
    ) -> bytes:
        got, answer = await self.request(method, path, body)
        if got not in (status if isinstance(status, tuple) else (status,)):
            raise HttpError(f"{method} {path}: {got} {answer[:200]!r}")
        return answer

    def close(self) -> None:
        self.writer.close()


# --- streams -----------------------------------------------------------------------------


class Receiver(Protocol):
    """Anything that receives events: a stream, a LISTEN connection."""

    received: int


@dataclass(eq=False)
class Fleet:
    """What all streams of one process received; `done` is set when every stream has
    `expected` events (or when `expected` is 0, never)."""

    sample: bool = False
    expected: int = 0
    streams: int = 0
    complete: int = 0
    events: int = 0
    first_at: float = 0.0
    last_at: float = 0.0
    latencies: array[float] = field(default_factory=lambda: array("d"))
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def arrived(self, stream: Receiver, count: int, now: float) -> None:
        if not self.first_at:
            self.first_at = now
        self.last_at = now
        self.events += count
        before = stream.received
        stream.received += count
        if self.expected and before < self.expected <= stream.received:
            self.complete += 1
            if self.complete >= self.streams:
                self.done.set()

    def expect(self, events: int, streams: Sequence[Receiver]) -> None:
        """From now on, `done` means each of `streams` has `events` events."""
        self.expected = events
        self.streams = len(streams)
        self.complete = sum(1 for stream in streams if stream.received >= events)
        if self.complete >= self.streams:
            self.done.set()


class Stream(asyncio.Protocol):
    """Base for one streaming connection: readiness, closing and counting."""

    fleet: Fleet

    def __init__(self, fleet: Fleet, request: bytes) -> None:
        self.fleet = fleet
        self.request = request
        self.received = 0
        self.transport: asyncio.Transport | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed = False
        self._head = b""
        self._in_body = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"closed before ready: {exc}"))

    def data_received(self, data: bytes) -> None:
        if self._in_body:
            self.body(data)
            return
        self._head += data
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            return
        head, rest = self._head[: end + 4], self._head[end + 4 :]
        self._head = b""
        self._in_body = True
        if not self.accept(head):
            if not self.ready.done():
                self.ready.set_exception(ConnectionError(head.split(b"\r\n", 1)[0].decode()))
            if self.transport is not None:
                self.transport.close()
            return
        if rest:
            self.body(rest)

    def accept(self, head: bytes) -> bool:
        raise NotImplementedError

    def body(self, data: bytes) -> None:
        raise NotImplementedError

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()


class SseStream(Stream):
    """An SSE subscription: counts frames that carry an `id:` line."""

    def __init__(self, fleet: Fleet, path: str) -> None:
        request = f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nAccept: text/event-stream\r\n\r\n"
        super().__init__(fleet, request.encode())
        self._tail = b"\n"
        self._buffer = b"\n"

    def accept(self, head: bytes) -> bool:
        ok = head.startswith(b"HTTP/1.1 200")
        if ok:
            self.ready.set_result(None)
        return ok

    def body(self, data: bytes) -> None:
        now = time.time()
        if not self.fleet.sample:
            joined = self._tail + data
            self._tail = joined[-4:]
            count = joined.count(SSE_MARK)
            if count:
                self.fleet.arrived(self, count, now)
            return
        frames = (self._buffer + data).split(b"\n\n")
        self._buffer = b"\n" + frames.pop()
        count = 0
        latencies = self.fleet.latencies
        for frame in frames:
            at = frame.find(b"id: ")
            if 0 <= at < 16:
                count += 1
                ts = read_ts(frame, at)
                if ts is not None:
                    latencies.append(now - ts)
        if count:
            self.fleet.arrived(self, count, now)


def ws_key() -> str:
    return base64.b64encode(os.urandom(16)).decode()


def ws_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """A masked client frame (clients must mask)."""
    mask = os.urandom(4)
    size = len(payload)
    if size < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | size)
    elif size < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, size)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, size)
    repeated = (mask * (size // 4 + 1))[:size]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(
        size, "big"
    )
    return head + mask + masked


class WsStream(Stream):
    """A WebSocket (`pgcast.v1`) connection; `hello` is sent once the upgrade is done.

    Counts `event` frames; `on_text` can be replaced for other protocols (queue consumers).
    Answers pings; the server never masks nor fragments these small frames.
    """

    def __init__(
        self,
        fleet: Fleet,
        hello: bytes,
        path: str = "/ws",
        on_text: Callable[[WsStream, bytes, float], None] | None = None,
    ) -> None:
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {ws_key()}\r\n"
            "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: pgcast.v1\r\n\r\n"
        )
        super().__init__(fleet, request.encode())
        self.hello = hello
        self.on_text = on_text or count_events
        self._buffer = bytearray()
        self._replies: list[bytes] | None = None
        """Frames sent while one read is handled: they go out in one write after it."""

    def accept(self, head: bytes) -> bool:
        ok = head.startswith(b"HTTP/1.1 101")
        if ok:
            self.send_text(self.hello)
        return ok

    def send_text(self, payload: bytes) -> None:
        if self._replies is not None:
            self._replies.append(ws_frame(payload))
        elif self.transport is not None and not self.closed:
            self.transport.write(ws_frame(payload))

    def body(self, data: bytes) -> None:
        self._replies = []
        try:
            self._frames(data)
        finally:
            replies, self._replies = self._replies, None
            if replies and self.transport is not None and not self.closed:
                self.transport.write(b"".join(replies))

    def _frames(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        now = time.time()
        at = 0
        end = len(buffer)
        while end - at >= 2:
            first, second = buffer[at], buffer[at + 1]
            size = second & 0x7F
            start = at + 2
            if size == 126:
                if end - at < 4:
                    break
                size = int.from_bytes(buffer[at + 2 : at + 4], "big")
                start = at + 4
            elif size == 127:
                if end - at < 10:
                    break
                size = int.from_bytes(buffer[at + 2 : at + 10], "big")
                start = at + 10
            if end < start + size:
                break
            payload = bytes(buffer[start : start + size])
            at = start + size
            opcode = first & 0x0F
            if opcode == 0x1:
                self.on_text(self, payload, now)
            elif opcode == 0x9 and self.transport is not None:
                self.transport.write(ws_frame(payload, 0xA))
            elif opcode == 0x8:
                self.close()
        del buffer[:at]


def count_events(stream: WsStream, payload: bytes, now: float) -> None:
    """Default WebSocket handler: readiness on `subscribed`, then count (and time) events."""
    if payload.startswith(WS_EVENT):
        if stream.fleet.sample:
            ts = read_ts(payload, payload.find(b'"data":'))
            if ts is not None:
                stream.fleet.latencies.append(now - ts)
        stream.fleet.arrived(stream, 1, now)
    elif payload.startswith(b'{"op":"subscribed"'):
        if not stream.ready.done():
            stream.ready.set_result(None)
    elif payload.startswith(b'{"op":"error"') and not stream.ready.done():
        stream.ready.set_exception(ConnectionError(payload.decode(errors="replace")))


async def open_streams(
    make: Callable[[], Stream], count: int, port: int, *, wave: int = 100, within: float = 60
) -> tuple[list[Stream], list[str]]:
    """Open `count` streams, `wave` at a time, each ready before the next wave starts.

    Returns the ready streams and the errors of those that failed.
    """
    loop = asyncio.get_running_loop()
    streams: list[Stream] = []
    errors: list[str] = []
    deadline = loop.time() + within

    async def one() -> Stream:
        async with asyncio.timeout(max(1.0, deadline - loop.time())):
            _transport, stream = await loop.create_connection(make, HOST, port)
            try:
                await stream.ready
            except BaseException:
                stream.close()
                raise
        return stream

    while len(streams) + len(errors) < count and loop.time() < deadline:
        size = min(wave, count - len(streams) - len(errors))
        results = await asyncio.gather(*(one() for _ in range(size)), return_exceptions=True)
        for result in results:
            if isinstance(result, Stream):
                streams.append(result)
            else:
                errors.append(f"{type(result).__name__}: {result}")
    return streams, errors
