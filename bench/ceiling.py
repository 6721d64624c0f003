"""The fan-out ceiling: a minimal raw asyncio server that writes pre-encoded frames.

It speaks just enough HTTP for the benchmark clients: an SSE `GET` gets a 200 and a
`retry:` line; a WebSocket upgrade gets a 101, and its first frame (the `subscribe`) is
answered with `subscribed`. A `broadcast` command from the parent then encodes each event
once and `transport.write`s it to every connection, yielding to the loop between events.
No database, no framework, no per-connection task: what Python itself can do here.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import struct
import time
from datetime import UTC, datetime
from typing import cast

from bench.procs import Control
from bench.wire import HOST

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
    b"Cache-Control: no-store\r\n\r\nretry: 2000\n\n"
)


def envelope(position: int, topic: str, padding: str) -> bytes:
    """An event envelope shaped like pgcast's, with the send time in `data.ts`."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return (
        f'{{"id":"{position:016d}","topic":"{topic}","type":null,"key":null,'
        f'"data":{{"ts": {time.time()!r}, "pad": "{padding}"}},"time":"{stamp}"}}'
    ).encode()


def sse_event(position: int, body: bytes) -> bytes:
    return b"id: %016d\nevent: message\ndata: %s\n\n" % (position, body)


def ws_server_frame(payload: bytes) -> bytes:
    """An unmasked text frame (servers never mask)."""
    size = len(payload)
    if size < 126:
        return struct.pack("!BB", 0x81, size) + payload
    if size < 65536:
        return struct.pack("!BBH", 0x81, 126, size) + payload
    return struct.pack("!BBQ", 0x81, 127, size) + payload


class Registry:
    """The open connections, by transport kind."""

    def __init__(self) -> None:
        self.sse: set[asyncio.Transport] = set()
        self.ws: set[asyncio.Transport] = set()


class CeilingConnection(asyncio.Protocol):
    """One client connection of the ceiling server."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.transport: asyncio.Transport | None = None
        self.head = b""
        self.kind = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        if self.kind == "ws-pending":
            # The client's subscribe frame; any content is accepted.
            self.transport.write(ws_server_frame(b'{"op":"subscribed","id":1}'))
            self.kind = "ws"
            self.registry.ws.add(self.transport)
            return
        if self.kind:
            return  # pongs or pings from clients: ignored
        self.head += data
        if b"\r\n\r\n" not in self.head:
            return
        lower = self.head.lower()
        if b"\r\nupgrade: websocket" in lower:
            at = lower.index(b"\r\nsec-websocket-key:") + len(b"\r\nsec-websocket-key:")
            key = self.head[at : self.head.index(b"\r\n", at)].strip()
            accept = base64.b64encode(hashlib.sha1(key + WS_GUID.encode()).digest())  # noqa: S324
            self.transport.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n"
                b"Sec-WebSocket-Protocol: pgcast.v1\r\n\r\n"
            )
            self.kind = "ws-pending"
        else:
            self.transport.write(SSE_HEAD)
            self.kind = "sse"
            self.registry.sse.add(self.transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.registry.sse.discard(self.transport)
            self.registry.ws.discard(self.transport)


async def broadcast(registry: Registry, kind: str, events: int, padding: str) -> float:
    """Write `events` frames to every connection of `kind`; returns the seconds it took."""
    started = time.perf_counter()
    targets = list(registry.sse if kind == "sse" else registry.ws)
    for position in range(1, events + 1):
        body = envelope(position, "bench.fanout", padding)
        if kind == "sse":
            frame = sse_event(position, body)
        else:
            frame = ws_server_frame(b'{"op":"event","sub":1,' + body[1:])
        for transport in targets:
            if not transport.is_closing():
                transport.write(frame)
        await asyncio.sleep(0)
    return time.perf_counter() - started


async def ceiling_server(ctl: Control, port: int) -> None:
    """Child entry: serve until `stop`; answers `count` and `broadcast` commands."""
    registry = Registry()
    server = await asyncio.get_running_loop().create_server(
        lambda: CeilingConnection(registry), HOST, port, backlog=4096
    )
    ctl.send("ready", port=port)
    try:
        for _ in range(10_000):
            kind, payload = await ctl.recv(within=600)
            if kind == "stop":
                break
            if kind == "count":
                ctl.send("count", sse=len(registry.sse), ws=len(registry.ws))
            elif kind == "broadcast":
                seconds = await broadcast(
                    registry, payload["kind"], payload["events"], payload.get("padding", "")
                )
                ctl.send("broadcasted", seconds=seconds)
    finally:
        server.close()
        for transport in [*registry.sse, *registry.ws]:
            transport.abort()
