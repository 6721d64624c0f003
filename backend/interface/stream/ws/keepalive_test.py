"""WebSocket keepalive against a real server: the process's sweep pings every socket each
WS_PING_INTERVAL_SECONDS and closes with 1011 one that leaves a ping unanswered that long
(protocols.keep_alive). A raw client sees the control frames that libraries hide."""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator

import anyio
import pytest

from backend.testing import postgres
from backend.testing.raw_websocket import CLOSE, PING, PONG, TEXT, raw_socket
from backend.testing.server import ServerProcess, start_server

pytestmark = [pytest.mark.external, pytest.mark.anyio]

INTERVAL = 0.5


@pytest.fixture(scope="module")
def pinging() -> Iterator[ServerProcess]:
    url = anyio.run(postgres.clone_template)
    try:
        with start_server(url, extra_env={"WS_PING_INTERVAL_SECONDS": str(INTERVAL)}) as server:
            yield server
    finally:
        anyio.run(postgres.drop, url)


async def test_a_client_that_answers_no_ping_is_closed_with_1011(pinging: ServerProcess) -> None:
    async with raw_socket(pinging.url) as socket:
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
    # of the interval) late, with room for a busy machine. The client may read the ping
    # late, so the close's lower bound counts from the opening, not from that read.
    assert INTERVAL * 0.9 <= pinged <= INTERVAL * 4
    assert 2 * INTERVAL * 0.9 <= closed <= pinged + INTERVAL * 4


async def test_a_client_that_answers_its_pings_stays_open(pinging: ServerProcess) -> None:
    async with raw_socket(pinging.url) as socket:
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
