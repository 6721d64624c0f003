"""WebSocket frames queued in one loop turn leave together, in order, and never after a close.

Runs `WebSocketProtocol` on a real socket pair (no handshake is needed to write frames).
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
import uvicorn
from uvicorn.server import ServerState

from backend.interface.server.protocols import WebSocketProtocol

pytestmark = pytest.mark.anyio


async def _no_app(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("no request reaches the app in this test")


async def test_frames_of_one_turn_go_out_together_and_in_order() -> None:
    """send_soon holds frames until the loop turn ends (one write); a direct write or a
    backed-up socket first sends what is held, and a closing socket sends nothing more."""
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair()
    theirs.setblocking(False)
    config = uvicorn.Config(app=_no_app, ws=WebSocketProtocol)
    config.load()
    _, protocol = await loop.connect_accepted_socket(
        lambda: WebSocketProtocol(config=config, server_state=ServerState(), app_state={}), ours
    )

    def received() -> bytes:
        try:
            return theirs.recv(4096)
        except BlockingIOError:
            return b""

    try:
        assert protocol.send_soon(b"a")
        assert protocol.send_soon(b"b")
        assert received() == b""  # held until the turn ends
        await asyncio.sleep(0.01)
        assert received() == b"ab"

        assert protocol.send_soon(b"c")
        protocol.write_now(b"d")  # a direct write: what was held goes first
        assert received() == b"cd"

        assert protocol.send_soon(b"e")
        protocol.writable.clear()  # backed up: refused, and what was held is sent
        assert not protocol.send_soon(b"f")
        assert received() == b"e"
        protocol.writable.set()

        assert protocol.send_soon(b"g")
        protocol.close_sent = True  # a close went out: nothing may follow it
        await asyncio.sleep(0.01)
        assert received() == b""
        assert not protocol.send_soon(b"h")
    finally:
        protocol.transport.close()
        theirs.close()
