"""Serving an accepted socket with no task while it is idle (under pgcast's server).

uvicorn gives every socket a task that runs the app for as long as the socket is open;
an idle socket would keep it, its coroutine frames and a cancel scope (about 2.5 KiB)
only to wait for the next frame. Once the socket is accepted, the app returns and the
protocol keeps the socket open (`protocols.drivable`): frames that arrive start a task
that reads and answers every frame waiting, in order, and ends when none is left; `end`
starts the task that closes the socket (`Connection.close_down`). Subscriptions run in
tasks of their own as before, and park when idle (runners.py).
"""

from __future__ import annotations

from functools import partial

import anyio
import sniffio
from starlette.types import Message

from backend.interface.server.inbox import Inbox
from backend.interface.server.protocols import drivable
from backend.interface.stream.ws.connection import Connection
from backend.interface.stream.ws.ops import dispatch

DISCONNECT = "websocket.disconnect"


def serve_driven(connection: Connection) -> bool:
    """Serve the connection from the frames that arrive; False under servers that cannot."""
    inbox = drivable(connection.websocket.scope)
    if inbox is None:
        return False
    connection.driven = True
    inbox.listener = partial(_arrived, connection, inbox)
    connection.open()
    if not inbox.empty():
        _arrived(connection, inbox)
    return True


def _arrived(connection: Connection, inbox: Inbox[Message]) -> None:
    """A message is waiting and nobody receives: start a reader, unless one runs or the
    socket has ended (its close is under way).

    This runs in the protocol's callback, where no task runs, so anyio cannot find out
    which event loop library it is on unless told (uvicorn runs on asyncio's loop or
    uvloop, which is asyncio's too); `pgcast serve` says so for everything it runs, plain
    uvicorn does not."""
    if connection.ended:
        return
    if connection.reading:
        connection.nudge_reader()
        return
    connection.reading = True
    token = sniffio.current_async_library_cvar.set("asyncio")
    try:
        if not connection.spawn(_read, connection, inbox):  # the server is shutting down
            connection.reading = False
            connection.end(None)
    finally:
        sniffio.current_async_library_cvar.reset(token)


async def _read(connection: Connection, inbox: Inbox[Message]) -> None:
    """Answer every waiting frame in order; the client leaving ends the connection. A
    socket that consumes a queue keeps its reader between frames: its client sends an ack
    for every message, and a task for each would cost more than the one that waits. The
    next frame, or the end of the socket's last consumer, wakes it (`nudge_reader`)."""
    websocket = connection.websocket
    try:
        while not connection.ended:
            if inbox.empty():
                if not _consuming(connection):
                    return
                nudge = connection.nudge = anyio.Event()
                await nudge.wait()
                connection.nudge = None
                continue
            message = await websocket.receive()
            if message["type"] == DISCONNECT:
                connection.end(None)
                return
            await dispatch(connection, message.get("text"))
    finally:
        connection.reading = False
        connection.nudge = None


def _consuming(connection: Connection) -> bool:
    """The socket runs a queue consumer (`ops.consume` keeps its cancel scope)."""
    return any(isinstance(sub, anyio.CancelScope) for sub in connection.subscriptions.values())
