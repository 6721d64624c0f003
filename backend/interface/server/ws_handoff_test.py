"""An accepted WebSocket can be served after the whole app has returned.

Runs pgcast's `HttpProtocol` and `WebSocketProtocol` on a real socket pair: the client's
upgrade request reaches an app that accepts, parks its body and returns; the body then
talks to the client with the server's own receive and send.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
from typing import Any

import pytest
import uvicorn
from uvicorn.server import ServerState

from backend.interface.server.protocols import HttpProtocol, WebSocketProtocol
from backend.interface.stream.handoff import SLOT, park

pytestmark = pytest.mark.anyio


def _masked_text_frame(text: str) -> bytes:
    """A client's text frame (short payload, masked as RFC 6455 requires)."""
    payload = text.encode()
    mask = os.urandom(4)
    masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
    return bytes([0x81, 0x80 | len(payload)]) + mask + masked


async def _read_until(loop: asyncio.AbstractEventLoop, sock: socket.socket, end: bytes) -> bytes:
    data = b""
    while end not in data:
        data += await asyncio.wait_for(loop.sock_recv(sock, 4096), 5)
    return data


async def _connected(config: uvicorn.Config) -> tuple[HttpProtocol, socket.socket]:
    """pgcast's `HttpProtocol` serving one end of a socket pair; the other end, for the
    client."""
    config.load()
    ours, theirs = socket.socketpair()
    theirs.setblocking(False)
    _, protocol = await asyncio.get_running_loop().connect_accepted_socket(
        lambda: HttpProtocol(config=config, server_state=ServerState(), app_state={}), ours
    )
    return protocol, theirs


async def _upgrade(theirs: socket.socket) -> bytes:
    """The client's upgrade request to /ws; the server's answer to it."""
    loop = asyncio.get_running_loop()
    key = base64.b64encode(os.urandom(16))
    await loop.sock_sendall(
        theirs,
        b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    return await _read_until(loop, theirs, b"\r\n\r\n")


async def test_an_accepted_socket_is_served_after_the_app_has_returned() -> None:
    loop = asyncio.get_running_loop()
    seen: dict[str, Any] = {}
    app_returned = asyncio.Event()
    done = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})

        async def body(receive: Any, send: Any) -> None:
            seen["app_returned"] = app_returned.is_set()
            seen["slot_left"] = SLOT in scope
            message = await receive()
            await send({"type": "websocket.send", "text": "echo:" + message["text"]})
            done.set()

        seen["parked"] = park(scope, body)
        app_returned.set()

    config = uvicorn.Config(app=app, http=HttpProtocol, ws=WebSocketProtocol)
    protocol, theirs = await _connected(config)
    try:
        handshake = await _upgrade(theirs)
        await loop.sock_sendall(theirs, _masked_text_frame("hi"))
        await asyncio.wait_for(done.wait(), 5)
        echo = await _read_until(loop, theirs, b"echo:hi")
    finally:
        protocol.transport.close()
        theirs.close()
    assert handshake.startswith(b"HTTP/1.1 101 ")
    assert seen == {"parked": True, "app_returned": True, "slot_left": False}
    assert echo.endswith(b"\x81\x07echo:hi")


async def test_a_socket_keeps_fewer_than_30_attributes_of_its_own_through_its_life() -> None:
    """CPython shares an instance dictionary's keys across a class only up to 29 of them;
    beyond, every socket's dictionary costs 1.6 KiB instead of 0.3 (`WebSocketProtocol`).
    This counts the attributes of a socket's protocol at each stage of a socket's life."""
    loop = asyncio.get_running_loop()
    counts: dict[str, int] = {}
    done = asyncio.Event()
    protocols: list[WebSocketProtocol] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        (protocol,) = protocols
        assert (await receive())["type"] == "websocket.connect"
        counts["handshake"] = len(vars(protocol))
        await send({"type": "websocket.accept", "subprotocol": None})
        counts["accepted"] = len(vars(protocol))
        message = await receive()
        await send({"type": "websocket.send", "text": "echo:" + message["text"]})
        counts["talking"] = len(vars(protocol))
        assert (await receive())["type"] == "websocket.disconnect"
        done.set()

    class Recorded(WebSocketProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            protocols.append(self)

    _, theirs = await _connected(uvicorn.Config(app=app, http=HttpProtocol, ws=Recorded))
    try:
        await _upgrade(theirs)
        await loop.sock_sendall(theirs, _masked_text_frame("hi"))
        await _read_until(loop, theirs, b"echo:hi")
        protocols[0].keepalive(0.0)  # a ping, as the sweep sends it
        await _read_until(loop, theirs, b"\x89\x04")
    finally:
        theirs.close()
    await asyncio.wait_for(done.wait(), 5)
    counts["closed"] = len(vars(protocols[0]))
    assert max(counts.values()) <= 29, counts


async def test_sockets_share_server_wide_values_only_with_their_own_config() -> None:
    state = ServerState()
    configs = [uvicorn.Config(app=_app, ws=WebSocketProtocol, root_path=p) for p in ("/a", "/b")]
    for config in configs:
        config.load()
    a = WebSocketProtocol(config=configs[0], server_state=state, app_state={})
    a_again = WebSocketProtocol(config=configs[0], server_state=state, app_state={})
    b = WebSocketProtocol(config=configs[1], server_state=state, app_state={})
    assert a._server is a_again._server
    assert (a.config, a.root_path, b.config, b.root_path) == (configs[0], "/a", configs[1], "/b")


async def _app(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("no request reaches the app in this test")
