"""The server's connection protocols against real servers.

Slow headers are cut and streams are not; refused handshakes and dropped stalled clients
leave one INFO line with the reason and nothing at ERROR.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator

import httpx
import pytest
from httpx_ws import WebSocketSession, WebSocketUpgradeError, connect_ws

from backend.testing.security import auth_server, token
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
    assert TIMEOUT * 0.5 <= elapsed < TIMEOUT + 3  # not refused at once, nor left open
    for answer in answers:
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408 "), answer
        assert b'"error":"request_timeout"' in body


def test_a_stream_outlives_the_headers_deadline(strict_server: ServerProcess) -> None:
    url = f"{strict_server.url}/topics/deadline/events"
    with (
        httpx.Client(timeout=10) as client,
        client.stream("GET", url, headers={"Accept": "text/event-stream"}) as stream,
    ):
        assert stream.status_code == 200
        time.sleep(TIMEOUT * 2)
        published = client.post(url, json={"data": "still here"})
        assert published.status_code == 201
        assert any('"still here"' in line for line in stream.iter_lines())


def test_a_request_whose_headers_arrive_in_time_is_served(strict_server: ServerProcess) -> None:
    with socket.create_connection(("127.0.0.1", strict_server.port), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        time.sleep(TIMEOUT / 2)
        sock.sendall(b"Host: 127.0.0.1\r\nConnection: close\r\n\r\n")
        answer = _read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 200 ")


def _refused_status(url: str, headers: dict[str, str], subprotocols: list[str]) -> int:
    with (
        httpx.Client() as client,
        pytest.raises(WebSocketUpgradeError) as refused,
        connect_ws(
            url, client, headers=headers, subprotocols=subprotocols, session_class=WebSocketSession
        ),
    ):
        pass
    return refused.value.response.status_code


def _stall_an_sse_client(server: ServerProcess, credentials: str) -> None:
    """Open an SSE stream that never reads, and publish until the server drops it."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(
            b"GET /topics/stall/events?after=latest HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Accept: text/event-stream\r\nAuthorization: Bearer "
            + credentials.encode()
            + b"\r\n\r\n"
        )
        time.sleep(0.3)
        batch = [{"data": "x" * 60_000}] * 10
        with httpx.Client(headers={"Authorization": f"Bearer {credentials}"}) as client:
            deadline = time.monotonic() + 20
            while "closed a stalled SSE client" not in server.log():
                assert time.monotonic() < deadline, "the stalled client was never dropped"
                client.post(f"{server.url}/topics/stall/events", json=batch)


def test_refusals_and_stalled_clients_log_one_info_line_with_the_reason_and_no_error() -> None:
    writer = token("logs", subscribe=[">"], publish=[">"])
    with auth_server(SEND_TIMEOUT="1") as server:
        ws = server.url.replace("http", "ws", 1) + "/ws"
        refusals = [
            (f"{ws}?token=not-a-token", {}, ["pgcast.v1"]),
            (f"{ws}?token={writer}", {"Origin": "https://evil.example"}, ["pgcast.v1"]),
            (f"{ws}?token={writer}", {}, ["other.v2"]),
        ]
        statuses = [_refused_status(*refusal) for refusal in refusals]
        _stall_an_sse_client(server, writer)
        time.sleep(0.5)
        log = server.log()
    assert statuses == [401, 403, 403]
    lines = log.splitlines()
    refused = [line for line in lines if "WebSocket handshake refused" in line]
    assert len(refused) == 3, refused
    assert all(" INFO " in line for line in refused)
    assert refused[0].endswith("(401): the token is malformed")
    assert refused[1].endswith("(403): this origin may not open a WebSocket here")
    assert refused[2].endswith("(403): no offered subprotocol is pgcast.v1")
    assert [line for line in lines if "closed a stalled SSE client" in line]
    assert [line for line in lines if " ERROR " in line or "Traceback" in line] == []
    assert "ASGI callable returned" not in log


def test_trickling_headers_do_not_reset_the_deadline(strict_server: ServerProcess) -> None:
    """A byte every half deadline keeps the connection busy but never finishes the headers:
    the deadline is for the whole head, so the client still gets its 408 on time."""
    with socket.create_connection(("127.0.0.1", strict_server.port), timeout=10) as sock:
        started = time.monotonic()
        closed = False
        for byte in b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: aaaaaaaaaaaa":
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                closed = True
                break
            time.sleep(TIMEOUT / 4)
            if time.monotonic() - started > TIMEOUT * 3:
                break
        answer = _read_until_closed(sock) if not closed else b""
        elapsed = time.monotonic() - started
    assert closed or answer.startswith(b"HTTP/1.1 408 "), answer
    assert TIMEOUT * 0.8 <= elapsed < TIMEOUT + 3


def test_pipelined_requests_are_answered_in_order(strict_server: ServerProcess) -> None:
    with socket.create_connection(("127.0.0.1", strict_server.port), timeout=5) as sock:
        sock.sendall(
            b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
            b"GET /nowhere HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        received = _read_until_closed(sock)
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", received)
    assert statuses == [b"200", b"404"]
