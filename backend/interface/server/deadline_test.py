"""HEADERS_TIMEOUT_SECONDS against a real server: slow headers are cut, streams are not."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from backend.testing.server import ServerProcess, start_server

pytestmark = pytest.mark.external

TIMEOUT = 1.0
SLOW_CLIENTS = 40


@pytest.fixture
def strict_server(database_url: str) -> Iterator[ServerProcess]:
    with start_server(database_url, extra_env={"HEADERS_TIMEOUT_SECONDS": str(TIMEOUT)}) as server:
        yield server


def _read_until_closed(sock: socket.socket) -> bytes:
    received = b""
    while chunk := sock.recv(4096):
        received += chunk
    return received


def test_half_sent_request_lines_are_answered_408_and_closed(strict_server: ServerProcess) -> None:
    slow = []
    for _ in range(SLOW_CLIENTS):
        sock = socket.create_connection(("127.0.0.1", strict_server.port), timeout=10)
        sock.sendall(b"GET /healthz HT")
        slow.append(sock)
    silent = socket.create_connection(("127.0.0.1", strict_server.port), timeout=10)
    started = time.monotonic()
    try:
        assert httpx.get(f"{strict_server.url}/healthz", timeout=5).status_code == 200
        answers = [_read_until_closed(sock) for sock in [*slow, silent]]
        elapsed = time.monotonic() - started
    finally:
        for sock in [*slow, silent]:
            sock.close()
    assert elapsed < TIMEOUT + 3
    for answer in answers:
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408 "), answer
        assert b'"error":"request_timeout"' in body


def test_a_stream_outlives_the_headers_deadline(strict_server: ServerProcess) -> None:
    url = f"{strict_server.url}/topics/deadline/events"
    with httpx.Client(timeout=10) as client:
        with client.stream("GET", url, headers={"Accept": "text/event-stream"}) as stream:
            assert stream.status_code == 200
            time.sleep(TIMEOUT * 2)
            published = client.post(url, json={"data": "still here"})
            assert published.status_code == 201
            lines = stream.iter_lines()
            assert any('"still here"' in line for line in lines)


def test_a_request_whose_headers_arrive_in_time_is_served(strict_server: ServerProcess) -> None:
    with socket.create_connection(("127.0.0.1", strict_server.port), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        time.sleep(TIMEOUT / 2)
        sock.sendall(b"Host: 127.0.0.1\r\nConnection: close\r\n\r\n")
        answer = _read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 200 ")
