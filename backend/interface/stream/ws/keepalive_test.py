"""WebSocket keepalive against a real server: the process's sweep pings every socket each
WS_PING_INTERVAL_SECONDS and closes with 1011 one that leaves a ping unanswered that long
(protocols.keep_alive). A raw client sees the control frames that libraries hide."""

from __future__ import annotations

import base64
import os
import struct
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import anyio
import pytest
from anyio.abc import SocketStream

from backend.testing import postgres
from backend.testing.server import ServerProcess, start_server

pytestmark = [pytest.mark.external, pytest.mark.anyio]

INTERVAL = 0.5
PING, PONG, CLOSE, TEXT = 0x9, 0xA, 0x8, 0x1


@pytest.fixture(scope="module")
def pinging() -> Iterator[ServerProcess]:
    url = anyio.run(postgres.clone_template)
    try:
        with start_server(url, extra_env={"WS_PING_INTERVAL_SECONDS": str(INTERVAL)}) as server:
            yield server
    finally:
        anyio.run(postgres.drop, url)


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
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        await self.stream.send(bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked)


@asynccontextmanager
async def raw_socket(server: ServerProcess) -> AsyncIterator[RawSocket]:
    where = urlsplit(server.url)
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


async def test_a_client_that_answers_no_ping_is_closed_with_1011(pinging: ServerProcess) -> None:
    async with raw_socket(pinging) as socket:
        opened = time.monotonic()
        with anyio.fail_after(10):
            opcode, _ = await socket.frame()
            pinged = time.monotonic() - opened
            assert opcode == PING
            opcode, payload = await socket.frame()
            closed = time.monotonic() - opened
    assert opcode == CLOSE
    assert struct.unpack("!H", payload[:2]) == (1011,)
    # Each at least an interval after the last, and at most one sweep period (a quarter
    # of the interval) late, with room for a busy machine.
    assert INTERVAL * 0.9 <= pinged <= INTERVAL * 4
    assert pinged + INTERVAL * 0.9 <= closed <= pinged + INTERVAL * 4


async def test_a_client_that_answers_its_pings_stays_open(pinging: ServerProcess) -> None:
    async with raw_socket(pinging) as socket:
        pings = 0
        with anyio.fail_after(10):
            while pings < 4:
                opcode, payload = await socket.frame()
                assert opcode == PING, (opcode, payload)
                pings += 1
                await socket.send(PONG, payload)
            await socket.send(TEXT, b'{"op":"ping"}')
            opcode, payload = await socket.frame()
            while opcode == PING:  # a ping may come first
                await socket.send(PONG, payload)
                opcode, payload = await socket.frame()
    assert (opcode, payload) == (TEXT, b'{"op":"pong"}')
