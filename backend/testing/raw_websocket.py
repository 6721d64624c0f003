"""A raw WebSocket client for tests that must see or send what client libraries hide:
control frames, several frames in one TCP write, a client that stops reading."""

from __future__ import annotations

import base64
import os
import re
import socket
import struct
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
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


def upgrade_request(netloc: str) -> bytes:
    """The handshake of a client offering subprotocol pgcast.v1."""
    key = base64.b64encode(os.urandom(16))
    return (
        b"GET /ws HTTP/1.1\r\nHost: " + netloc.encode() + b"\r\n"
        b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Protocol: pgcast.v1\r\n\r\n"
    )


def _address(url: str) -> tuple[str, int, str]:
    where = urlsplit(url)
    assert where.hostname is not None
    assert where.port is not None
    return where.hostname, where.port, where.netloc


@asynccontextmanager
async def raw_socket(url: str) -> AsyncIterator[RawSocket]:
    """A socket to the server at `url`'s /ws, past the handshake (subprotocol pgcast.v1)."""
    host, port, netloc = _address(url)
    async with await anyio.connect_tcp(host, port) as stream:
        await stream.send(upgrade_request(netloc))
        socket = RawSocket(stream)
        while b"\r\n\r\n" not in socket.buffer:
            socket.buffer += await stream.receive()
        response, socket.buffer = socket.buffer.split(b"\r\n\r\n", 1)
        assert response.startswith(b"HTTP/1.1 101 "), response
        yield socket


@contextmanager
def slow_reader(url: str) -> Iterator[socket.socket]:
    """A blocking socket to `url`'s /ws, past the handshake, whose receive window stays at
    4 KiB: the server's frames to it back up after a few hundred KiB instead of filling
    megabytes of kernel buffer first."""
    host, port, netloc = _address(url)
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(10)
        sock.connect((host, port))
        sock.sendall(upgrade_request(netloc))
        response = b""
        while b"\r\n\r\n" not in response:
            response += sock.recv(65536)
        assert response.startswith(b"HTTP/1.1 101 "), response
        yield sock


def receive_until(sock: socket.socket, pattern: bytes) -> re.Match[bytes]:
    """Read from a blocking socket until `pattern` matches what has arrived."""
    data = b""
    while (found := re.search(pattern, data)) is None:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    return found
