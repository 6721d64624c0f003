"""A raw WebSocket client for tests that must see or send what client libraries hide:
control frames, several frames in one TCP write, a half-closed connection."""

from __future__ import annotations

import base64
import os
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import anyio
from anyio.abc import SocketStream

PING, PONG, CLOSE, TEXT = 0x9, 0xA, 0x8, 0x1


class RawSocket:
    """A WebSocket client that reads every frame, control frames included."""

    def __init__(self, stream: SocketStream) -> None:
        self.stream = stream
        self.buffer = b""

    async def _fill(self, size: int) -> None:
        while len(self.buffer) < size:
            self.buffer += await self.stream.receive()

    async def frame(self) -> tuple[int, bytes]:
        """The next frame from the server (unmasked, unfragmented): opcode and payload."""
        await self._fill(2)
        opcode, length = self.buffer[0] & 0x0F, self.buffer[1] & 0x7F
        head = 2
        if length == 126:
            await self._fill(4)
            (length,) = struct.unpack("!H", self.buffer[2:4])
            head = 4
        await self._fill(head + length)
        payload = self.buffer[head : head + length]
        self.buffer = self.buffer[head + length :]
        return opcode, payload

    async def send(self, opcode: int, payload: bytes) -> None:
        await self.stream.send(client_frame(opcode, payload))


def client_frame(opcode: int, payload: bytes) -> bytes:
    """One masked, unfragmented client frame (payload under 126 bytes)."""
    assert len(payload) < 126, "longer payloads need the extended length"
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked


@asynccontextmanager
async def raw_socket(url: str) -> AsyncIterator[RawSocket]:
    """A socket to the server at `url`'s /ws, past the handshake (subprotocol pgcast.v1)."""
    where = urlsplit(url)
    assert where.hostname is not None
    assert where.port is not None
    async with await anyio.connect_tcp(where.hostname, where.port) as stream:
        key = base64.b64encode(os.urandom(16))
        await stream.send(
            b"GET /ws HTTP/1.1\r\nHost: " + where.netloc.encode() + b"\r\n"
            b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Protocol: pgcast.v1\r\n\r\n"
        )
        socket = RawSocket(stream)
        while b"\r\n\r\n" not in socket.buffer:
            socket.buffer += await stream.receive()
        response, socket.buffer = socket.buffer.split(b"\r\n\r\n", 1)
        assert response.startswith(b"HTTP/1.1 101 "), response
        yield socket
