"""A client that sends acks without reading its answers (settling.room_to_settle).

Acks are handed to the settling task and the next frame is read at once; while that task
waits to write its answers to a client that reads nothing, every ack (or failing frame)
used to wait in a list that grew as fast as the client could send. Past SETTLING_LIMIT
waiting frames the server now reads no further: the client meets TCP's backpressure and
the server's memory stays flat. The client keeps its receive window small, so the
server's answers back up after a few hundred KiB rather than filling megabytes of kernel
buffer first.
"""

from __future__ import annotations

import base64
import os
import re
import socket
import time
from collections.abc import Iterator

import anyio
import httpx
import pytest

from backend.testing import postgres
from backend.testing.raw_websocket import TEXT, client_frame
from backend.testing.server import ServerProcess, start_server

pytestmark = pytest.mark.external

FLOOD = 300_000  # about 11 MB of acks for a message the socket does not hold
SENDING_SECONDS = 3.0
RSS_GROWTH_MIB = 40  # without the bound the server holds every one: hundreds of MiB


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    url = anyio.run(postgres.clone_template)
    try:
        with start_server(url) as process:
            yield process
    finally:
        anyio.run(postgres.drop, url)


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS line")


def receive_until(sock: socket.socket, pattern: bytes) -> re.Match[bytes]:
    """Read until `pattern` matches what the server sent."""
    data = b""
    while (found := re.search(pattern, data)) is None:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    return found


def test_acks_sent_without_reading_the_answers_do_not_grow_the_servers_memory(
    server: ServerProcess,
) -> None:
    enqueued = httpx.post(f"{server.url}/queues/flood/messages", json={"data": 1}, timeout=10)
    assert enqueued.status_code == 201, enqueued.text
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(10)
        sock.connect(("127.0.0.1", server.port))
        key = base64.b64encode(os.urandom(16))
        sock.sendall(
            b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: " + key + b"\r\n"
            b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: pgcast.v1\r\n\r\n"
        )
        receive_until(sock, rb"HTTP/1.1 101 [^\r]*\r\n(.*\r\n)*?\r\n")
        sock.sendall(client_frame(TEXT, b'{"op":"consume","id":"c","queue":"flood"}'))
        message = receive_until(sock, rb'"op":"message","sub":"c","id":"([^"]+)"').group(1)
        before = rss_mib(server.process.pid)

        ack = b'{"op":"ack","message":"' + message + b'"}'
        payload = (
            client_frame(TEXT, ack) + client_frame(TEXT, b'{"op":"ack","message":"x"}') * FLOOD
        )
        sock.settimeout(0.1)
        sent = 0
        deadline = time.monotonic() + SENDING_SECONDS
        while sent < len(payload) and time.monotonic() < deadline:
            try:
                sent += sock.send(payload[sent : sent + 65536])
            except TimeoutError:
                continue
        time.sleep(1)
        grown = rss_mib(server.process.pid) - before
    assert grown < RSS_GROWTH_MIB, f"RSS grew by {grown:.0f} MiB ({sent} bytes sent)"
    assert httpx.get(f"{server.url}/healthz", timeout=10).status_code == 200
