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

import time

import httpx
import pytest

from backend.testing.faults import rss
from backend.testing.raw_websocket import TEXT, client_frame, receive_until, slow_reader
from backend.testing.server import ServerProcess

pytestmark = pytest.mark.external

FLOOD = 300_000  # about 11 MB of acks for a message the socket does not hold
SENDING_SECONDS = 3.0
RSS_GROWTH_MIB = 40  # without the bound the server holds every one: hundreds of MiB


def test_acks_sent_without_reading_the_answers_do_not_grow_the_servers_memory(
    shared_server: ServerProcess,
) -> None:
    server = shared_server
    enqueued = httpx.post(f"{server.url}/queues/flood/messages", json={"data": 1}, timeout=10)
    assert enqueued.status_code == 201, enqueued.text
    with slow_reader(server.url) as sock:
        sock.sendall(client_frame(TEXT, b'{"op":"consume","id":"c","queue":"flood"}'))
        message = receive_until(sock, rb'"op":"message","sub":"c","id":"([^"]+)"').group(1)
        before = rss(server.process.pid) / 2**20

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
        grown = rss(server.process.pid) / 2**20 - before
    assert grown < RSS_GROWTH_MIB, f"RSS grew by {grown:.0f} MiB ({sent} bytes sent)"
    assert httpx.get(f"{server.url}/healthz", timeout=10).status_code == 200
