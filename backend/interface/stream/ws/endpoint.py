"""GET /ws: the handshake, credentials at connect, and the receive loop.

Close codes: 1001 when the server shuts down (or its engine stops), 1011 on an internal
error; uvicorn closes with 1009 a frame over WS_MAX_FRAME_BYTES. A handshake offering
only other subprotocols is refused with HTTP 403.

Access (docs/security.md): a handshake from a foreign `Origin` is refused with HTTP 403 and
one carrying a bad token (header or `?token=`) with HTTP 401. Without any token, the
first frame must be `auth`; anything else, no `auth` within AUTH_TIMEOUT_SECONDS, or the
token expiring closes the socket with 1008. A full server (MAX_CONNECTIONS) accepts and
closes at once with 1013.

Once accepted, the socket is served after the framework has unwound
(`handoff.StreamHandoff`), so no middleware or router frame stays alive while it is open.
Under pgcast's server it then has no task while idle: frames that arrive start one
(driven.py), and each subscription has one while it has work (an idle event subscription
parks: runners.py). Under other servers one task reads its frames for as long as it is
open (`_run`). The deadlines, the stall watchdog and the shutdown close are the process's
`WsSweep`'s (ws/sweep.py).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Coroutine
from typing import Any

import anyio
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from backend.core.errors import Forbidden, PgcastError, Unauthorized
from backend.interface.http.errors import error_response
from backend.interface.security.access import principal_of
from backend.interface.security.auth import Principal
from backend.interface.server.protocols import lighten_websocket_scope
from backend.interface.server.state import AppState
from backend.interface.stream.handoff import park
from backend.interface.stream.slots import acquire_slot
from backend.interface.stream.ws.connection import CLOSE_TIMEOUT, Connection
from backend.interface.stream.ws.driven import DISCONNECT, serve_driven
from backend.interface.stream.ws.frames import INTERNAL_ERROR, POLICY_VIOLATION, TRY_AGAIN_LATER
from backend.interface.stream.ws.ops import dispatch

logger = logging.getLogger(__name__)

SUBPROTOCOL = "pgcast.v1"


async def websocket_endpoint(websocket: WebSocket) -> None:
    """GET /ws: check origin and credentials, negotiate `pgcast.v1`, serve frames, close."""
    state = AppState.of(websocket)
    guard = state.guard
    offered: list[str] = websocket.scope.get("subprotocols") or []
    if offered and SUBPROTOCOL not in offered:
        await websocket.close(1002, f"no offered subprotocol is {SUBPROTOCOL}")  # HTTP 403
        return
    if not guard.origins.allows(websocket.headers.get("origin"), websocket.headers.get("host")):
        await _refuse(websocket, Forbidden("this origin may not open a WebSocket here"))
        return
    try:
        principal = principal_of(websocket)
    except Unauthorized as exc:
        await _refuse(websocket, exc)
        return
    subprotocol = SUBPROTOCOL if offered else None
    if not await acquire_slot(state):
        await websocket.accept(subprotocol)
        with contextlib.suppress(WebSocketDisconnect), anyio.move_on_after(CLOSE_TIMEOUT):
            await websocket.close(TRY_AGAIN_LATER, "too many connections; retry later")
        return
    try:
        await websocket.accept(subprotocol)
    except BaseException:
        guard.slots.release()
        raise
    if not park(websocket.scope, Accepted(websocket.scope, state, principal)):
        await _run(Connection(websocket, state, state.ws.tasks, principal))


class Accepted:
    """The parked body of an accepted socket, served once the framework has unwound."""

    __slots__ = ("principal", "scope", "state")

    def __init__(self, scope: Scope, state: AppState, principal: Principal | None) -> None:
        self.scope = scope
        self.state = state
        self.principal = principal

    def __call__(self, receive: Receive, send: Send) -> Coroutine[Any, Any, None]:
        """Serve the socket on the server's own receive and send (the handoff's): without
        a task while it is idle where the server allows it (`driven`), else `_run`. A plain
        function returning the coroutine, so no frame of its own stays alive."""
        scope = self.scope
        lighten_websocket_scope(scope)
        websocket = WebSocket(scope, receive, send)
        websocket.client_state = websocket.application_state = WebSocketState.CONNECTED
        state = self.state
        connection = Connection(websocket, state, state.ws.tasks, self.principal)
        if serve_driven(connection):
            return _served()
        return _run(connection)


async def _served() -> None:
    """What the handoff awaits for a driven socket: it is served already."""


async def _run(connection: Connection) -> None:
    """Serve an accepted socket from this task: handle client frames in order until the
    client leaves or the connection ends, then close it. One frame for it all."""
    websocket = connection.websocket
    try:
        with anyio.CancelScope() as connection.host:
            connection.open()  # may end it at once (shutdown): the scope is there to cancel
            while (message := await websocket.receive())["type"] != DISCONNECT:
                await dispatch(connection, message.get("text"))
    except Exception:
        logger.exception("WebSocket session failed", extra={"action": "ws_error"})
        connection.end(INTERNAL_ERROR)
    finally:
        connection.host = None
        await connection.close_down()


async def _refuse(websocket: WebSocket, exc: PgcastError) -> None:
    """Refuse the handshake with the JSON error and its status, where the server can."""
    if "websocket.http.response" in (websocket.scope.get("extensions") or {}):
        await websocket.send_denial_response(error_response(exc))
    else:
        await websocket.close(POLICY_VIOLATION)
