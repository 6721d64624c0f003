"""One timer per process for every open WebSocket: stalled writes, keepalive pings, the
auth deadline, token expiry and the shutdown close.

An idle socket should cost little more than its subscriptions, so a connection owns no
watcher task and no timer. This sweep looks at every socket SWEEPS_PER_TIMEOUT times per
SEND_TIMEOUT or WS_PING_INTERVAL_SECONDS, whichever is shorter, and also wakes at the
earliest auth deadline or token expiry and at shutdown. It drops a client whose socket
accepted nothing for SEND_TIMEOUT during a write (no close frame: it could not get through
either), pings each socket every WS_PING_INTERVAL_SECONDS and closes with 1011 one whose
ping went unanswered that long (`protocols.keep_alive`), closes with 1008 a socket that
sent no `auth` within AUTH_TIMEOUT_SECONDS or whose token expired, and with 1001 every
socket when the server shuts down. Ending a connection only cancels its tasks; its close
frame goes out once they have finished (`Connection.close_down`). Each round counts the
open sockets for `Trimmer`: by then the memory of sockets that closed since the last
round has been freed.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio

from backend.interface.server.protocols import keep_alive
from backend.interface.stream.session import Farewell
from backend.interface.stream.trim import TableSource, Trimmer
from backend.interface.stream.ws.frames import POLICY_VIOLATION
from backend.interface.stream.ws.tasks import SocketTasks

if TYPE_CHECKING:
    from backend.interface.stream.ws.connection import Connection

logger = logging.getLogger(__name__)

SWEEPS_PER_TIMEOUT = 4  # a stalled client is dropped within 1.25 x SEND_TIMEOUT
AUTH_TIMEOUT_SECONDS = 10.0
NO_AUTH = "no auth frame in time"


@dataclass(eq=False)
class WsSweep:
    """The open sockets of this process, the one task that looks after them, and the task
    group where their work runs (`Connection.spawn`)."""

    send_timeout: float
    stopping: anyio.Event
    tasks: SocketTasks
    ping_interval: float = math.inf
    tables: tuple[TableSource, ...] = ()
    """Where other sets and dicts that grow with the connections are, compacted at each
    trim."""
    _sockets: set[Connection] = field(default_factory=set)
    _next_due: float = math.inf
    """Monotonic time of the earliest auth deadline or token expiry among the sockets."""
    _nap: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    _trim: Trimmer = field(init=False)

    def __post_init__(self) -> None:
        self._trim = Trimmer(lambda: (self._sockets,), *self.tables)

    def add(self, connection: Connection) -> None:
        self._sockets.add(connection)
        self._trim.opened(len(self._sockets))
        if self.stopping.is_set():
            connection.say_farewell(Farewell.SHUTDOWN)
        else:
            self.reschedule(connection)

    def discard(self, connection: Connection) -> None:
        self._sockets.discard(connection)

    def reschedule(self, connection: Connection) -> None:
        """Wake earlier if this socket's auth deadline or token expiry comes first."""
        due = self._due(connection, time.monotonic(), time.time())
        if due < self._next_due:
            self._next_due = due
            self._nap.cancel()

    async def run(self) -> None:
        """Sweep every fraction of SEND_TIMEOUT, at each deadline and at shutdown."""
        period = min(self.send_timeout, self.ping_interval) / SWEEPS_PER_TIMEOUT
        while True:
            with anyio.CancelScope() as self._nap:
                nap = max(0.0, min(period, self._next_due - time.monotonic()))
                with anyio.move_on_after(nap):
                    await self.stopping.wait()
            self._sweep()
            if self.stopping.is_set():
                await anyio.sleep(period)

    def _sweep(self) -> None:
        now = time.monotonic()
        wall = time.time()
        stopping = self.stopping.is_set()
        self._next_due = math.inf
        for connection in list(self._sockets):
            if stopping:
                connection.say_farewell(Farewell.SHUTDOWN)
                continue
            if connection.writing and now - connection.progress_at >= self.send_timeout:
                logger.info("dropped a stalled WebSocket client", extra={"action": "send_timeout"})
                connection.end(None)
                continue
            keep_alive(connection.websocket.scope, self.ping_interval)
            due = self._due(connection, now, wall)
            if due > now:
                self._next_due = min(self._next_due, due)
            elif connection.principal is None:
                connection.end(POLICY_VIOLATION, NO_AUTH)
            else:
                connection.say_farewell(Farewell.EXPIRED)
        self._trim.note(len(self._sockets))

    def _due(self, connection: Connection, now: float, wall: float) -> float:
        """Monotonic time by which the socket must be authenticated, or its token expires."""
        principal = connection.principal
        if principal is None:
            return connection.opened_at + AUTH_TIMEOUT_SECONDS
        if principal.expires_at is None:
            return math.inf
        return now + principal.expires_at - wall
