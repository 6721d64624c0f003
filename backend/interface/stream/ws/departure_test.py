"""A socket that ends with frames still unanswered (connection.write): the server takes
the first write that fails as the end, skips the rest, and logs no error. A raw client
puts pings and then a frame that is not UTF-8 in one TCP write: the server's WebSocket
parser fails the connection (1007) while the pings still wait for their pongs. That
client fault is one INFO line, not uvicorn's error with a traceback."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator

import anyio
import httpx
import pytest

from backend.testing import postgres
from backend.testing.raw_websocket import (
    CLOSE,
    TEXT,
    client_frame,
    raw_socket,
    receive_until,
    slow_reader,
)
from backend.testing.server import ServerProcess, start_server

pytestmark = [pytest.mark.external, pytest.mark.anyio]

PINGS = 3
CLIENTS = 5


def ws_connections(metrics: str) -> float:
    """The server's open WebSockets, from the text of its /metrics."""
    found = re.search(r'^pgcast_connections\{transport="ws"\} (\S+)$', metrics, re.M)
    return float(found.group(1)) if found else 0.0


async def test_frames_left_behind_by_a_failed_connection_end_it_without_an_error(
    shared_server: ServerProcess,
) -> None:
    server = shared_server
    pings = b"".join(client_frame(TEXT, b'{"op":"ping"}') for _ in range(PINGS))
    for _ in range(CLIENTS):
        async with raw_socket(server.url) as socket:
            await socket.stream.send(pings + client_frame(TEXT, b"\xff"))
            with anyio.fail_after(10):
                while (frame := await socket.frame())[0] != CLOSE:
                    assert frame == (TEXT, b'{"op":"pong"}'), frame
            assert frame[1][:2] == (1007).to_bytes(2, "big"), frame
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        with anyio.fail_after(10):
            while ws_connections((await client.get("/metrics")).text) > 0:
                await anyio.sleep(0.05)
        assert (await client.get("/healthz")).status_code == 200
    log = server.log()
    assert log.count('"WebSocket /ws" [accepted]') == CLIENTS
    assert log.count("INFO    uvicorn.error: WebSocket closed with 1007") == CLIENTS, log
    for sign in ("Exception in ASGI application", "session failed", "Traceback"):
        assert sign not in log, log


@pytest.fixture(scope="module")
def impatient() -> Iterator[ServerProcess]:
    url = anyio.run(postgres.clone_template)
    try:
        with start_server(url, extra_env={"SEND_TIMEOUT": "0.5"}) as process:
            yield process
    finally:
        anyio.run(postgres.drop, url)


def test_a_stalled_client_that_is_dropped_is_cut_off_at_once(impatient: ServerProcess) -> None:
    """A client that stops reading is dropped after SEND_TIMEOUT without a close frame
    (it could not get through). Its connection is reset at once: a graceful close would
    wait for the unsent frames to drain, which for a client that never reads again is
    never, and would keep them and the connection meanwhile."""
    chunk = "x" * 200_000
    with slow_reader(impatient.url) as sock, httpx.Client(base_url=impatient.url) as client:
        sock.sendall(client_frame(TEXT, b'{"op":"subscribe","id":"s","topic":"stall"}'))
        receive_until(sock, b'"op":"subscribed"')
        deadline = time.monotonic() + 30
        while ws_connections(client.get("/metrics").text) > 0:
            assert time.monotonic() < deadline, "the server never gave up on the stalled client"
            assert client.post("/topics/stall/events", json={"data": chunk}).status_code == 201
        with pytest.raises(OSError):  # reset by the server: sending fails
            send_pings(sock)


def send_pings(sock: socket.socket) -> None:
    for _ in range(50):
        sock.send(client_frame(TEXT, b'{"op":"ping"}'))
        time.sleep(0.02)
