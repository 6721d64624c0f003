"""GET /ws: the handshake, credentials at connect, and the receive loop.

Close codes: 1001 when the server shuts down (or its engine stops), 1011 on an internal
error; uvicorn closes with 1009 a frame over WS_MAX_FRAME_BYTES. A handshake offering
only other subprotocols is refused with HTTP 403.

Access (docs/security.md): a handshake from a foreign `Origin` is refused with HTTP 403 and
one carrying a bad token (header or `?token=`) with HTTP 401. Without any token, the
first frame must be `auth`; anything else, no `auth` within AUTH_TIMEOUT_SECONDS, or the
token expiring closes the socket with 1008. A full server (MAX_CONNECTIONS) accepts and
closes at once with 1013.

A connection runs on uvicorn's task, plus one task per subscription while it has work (an
idle event subscription parks: runners.py); the deadlines, the
stall watchdog and the shutdown close are the process's `WsSweep`'s (ws/sweep.py). Once
accepted, the socket is served after the framework has unwound (`handoff.StreamHandoff`),
so no middleware or router frame stays alive while it is open.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Coroutine
from typing import Any

import anyio
from starlette.types import Receive, Scope, Send
from starlette.websockets import (
    WebSocket,
    WebSocketDisconnect,
    WebSocketDisconnected,
    WebSocketState,
)

from backend.core.errors import Forbidden, PgcastError, Unauthorized
from backend.interface.http.errors import error_response
from backend.interface.security.access import principal_of
from backend.interface.security.auth import Principal
from backend.interface.server.protocols import lighten_websocket_scope
from backend.interface.server.state import AppState
from backend.interface.stream.handoff import park
from backend.interface.stream.slots import acquire_slot
from backend.interface.stream.ws.connection import Connection
from backend.interface.stream.ws.frames import INTERNAL_ERROR, POLICY_VIOLATION, TRY_AGAIN_LATER
from backend.interface.stream.ws.ops import dispatch

logger = logging.getLogger(__name__)

SUBPROTOCOL = "pgcast.v1"
DISCONNECT = "websocket.disconnect"
CLOSE_TIMEOUT = 1.0


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
        await _run(websocket, state, principal)


class Accepted:
    """The parked body of an accepted socket, served once the framework has unwound."""

    __slots__ = ("principal", "scope", "state")

    def __init__(self, scope: Scope, state: AppState, principal: Principal | None) -> None:
        self.scope = scope
        self.state = state
        self.principal = principal

    def __call__(self, receive: Receive, send: Send) -> Coroutine[Any, Any, None]:
        """`_run` on the server's own receive and send (the handoff's); a plain function
        returning the coroutine, so no frame of its own stays alive under the socket."""
        scope = self.scope
        lighten_websocket_scope(scope)
        websocket = WebSocket(scope, receive, send)
        websocket.client_state = websocket.application_state = WebSocketState.CONNECTED
        return _run(websocket, self.state, self.principal)


async def _run(websocket: WebSocket, state: AppState, principal: Principal | None) -> None:
    """Serve an accepted socket: handle client frames in order until the client leaves or
    the connection ends, close it, then give its slot back. One frame for it all: every
    idle socket keeps it alive."""
    gauge = state.metrics.connections.labels("ws")
    gauge.inc()
    try:
        with state.lifecycle.stream():
            try:
                async with anyio.create_task_group() as tasks:
                    connection = Connection(websocket, state, tasks, principal)
                    state.ws.add(connection)
                    try:
                        while (message := await websocket.receive())["type"] != DISCONNECT:
                            await dispatch(connection, message.get("text"))
                    finally:
                        state.ws.discard(connection)
                        connection.stop_subscriptions()
                    connection.end(None)
                code, reason = connection.close_code, connection.close_reason
            except Exception:
                logger.exception("WebSocket session failed", extra={"action": "ws_error"})
                code, reason = INTERNAL_ERROR, ""
            if code is not None:
                with (
                    contextlib.suppress(WebSocketDisconnect, WebSocketDisconnected),
                    anyio.move_on_after(CLOSE_TIMEOUT),
                ):
                    await websocket.close(code, reason)
    finally:
        gauge.dec()
        state.guard.slots.release()


async def _refuse(websocket: WebSocket, exc: PgcastError) -> None:
    """Refuse the handshake with the JSON error and its status, where the server can."""
    if "websocket.http.response" in (websocket.scope.get("extensions") or {}):
        await websocket.send_denial_response(error_response(exc))
    else:
        await websocket.close(POLICY_VIOLATION)
