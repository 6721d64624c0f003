"""Long-lived streams keep a scope trimmed to what the server and pgcast still read.

Runs `HttpProtocol` on a real socket pair: a request whose app parks a body, which then
looks at the scope it shares with the server while the response streams. An accepted
WebSocket's scope is trimmed only under pgcast's own WebSocket protocol.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
import uvicorn
from uvicorn.server import ServerState

from backend.interface.server.protocols import (
    CYCLE,
    SCOPE_KEPT,
    WEBSOCKET_SCOPE_KEPT,
    WS_PROTOCOL,
    HttpProtocol,
    WebSocketProtocol,
    lighten_websocket_scope,
)
from backend.interface.stream.handoff import park

pytestmark = pytest.mark.anyio


async def test_a_parked_body_keeps_only_what_the_server_reads() -> None:
    loop = asyncio.get_running_loop()
    seen: dict[str, Any] = {}
    done = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["path"] == "/again":
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        seen["while_app_runs"] = set(scope)

        async def body(receive: Any, send: Any) -> None:
            seen["while_body_runs"] = dict(scope)
            seen["protocol_headers"] = protocol.headers
            seen["protocol_parser"] = protocol.parser
            await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            done.set()

        await send({"type": "http.response.start", "status": 200, "headers": []})
        assert park(scope, body)

    ours, theirs = socket.socketpair()
    config = uvicorn.Config(app=app, http=HttpProtocol)
    config.load()
    _, protocol = await loop.connect_accepted_socket(
        lambda: HttpProtocol(config=config, server_state=ServerState(), app_state={}), ours
    )
    theirs.setblocking(False)
    try:
        await loop.sock_sendall(
            theirs,
            b"GET /stream?x=1 HTTP/1.1\r\nHost: h\r\nAccept: text/event-stream\r\n"
            b"User-Agent: test\r\n\r\n",
        )
        await asyncio.wait_for(done.wait(), 5)
        answer = await asyncio.wait_for(loop.sock_recv(theirs, 4096), 5)
        # The same connection serves the next request: a new parser is made for it.
        await loop.sock_sendall(theirs, b"GET /again HTTP/1.1\r\nHost: h\r\n\r\n")
        again = await asyncio.wait_for(loop.sock_recv(theirs, 4096), 5)
    finally:
        protocol.transport.close()
        theirs.close()
    assert {"headers", "state", "asgi", "server", "scheme"} <= seen["while_app_runs"]
    kept = seen["while_body_runs"]
    assert set(kept) <= SCOPE_KEPT
    assert CYCLE in kept
    assert (kept["method"], kept["path"], kept["query_string"]) == ("GET", "/stream", b"x=1")
    assert seen["protocol_headers"] is None  # the request's headers are let go too
    assert seen["protocol_parser"] is None  # and its parser, which has finished
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert b"data: 1" in answer
    assert again.startswith(b"HTTP/1.1 204 ")


async def test_an_accepted_websockets_scope_keeps_what_is_still_read() -> None:
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair()
    config = uvicorn.Config(app=_no_app, ws=WebSocketProtocol)
    config.load()
    _, protocol = await loop.connect_accepted_socket(
        lambda: WebSocketProtocol(config=config, server_state=ServerState(), app_state={}), ours
    )
    try:
        handshake = {
            "type": "websocket",
            "path": "/ws",
            "root_path": "",
            "query_string": b"",
            "client": ("127.0.0.1", 5000),
            "app": object(),
            "headers": [(b"host", b"h"), (b"origin", b"http://h")],
            "subprotocols": ["pgcast.v1"],
            "state": {},
            "extensions": {"websocket.http.response": {}},
        }
        served = {**handshake, WS_PROTOCOL: protocol}
        lighten_websocket_scope(served)
        elsewhere = dict(handshake)
        lighten_websocket_scope(elsewhere)  # not pgcast's protocol: left alone
    finally:
        protocol.transport.close()
        theirs.close()
    assert set(served) == WEBSOCKET_SCOPE_KEPT
    assert served[WS_PROTOCOL] is protocol
    assert elsewhere == handshake


async def _no_app(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("no request reaches the app in this test")
