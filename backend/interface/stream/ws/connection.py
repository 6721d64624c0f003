"""One open socket: its send lock and frame writing, its watchdog, and how it ends.

Every task writes its own frames to the socket under the connection's send lock, so a
subscription's events go out from the task that took them from its buffer, with no hop
through a writer task; frames from one write stay together and in order. A slow client
holds its subscriptions back (the hub then moves them to catch-up, so memory stays bounded
and nothing is lost), and a client that accepts nothing for SEND_TIMEOUT is dropped
without a close frame, because a close frame could not get through either. It resumes by
subscribing again with `after` set to the last id it saw.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio
from anyio.abc import TaskGroup
from starlette.websockets import WebSocket, WebSocketDisconnect

from backend.core import exactjson
from backend.core.errors import DatabaseUnavailable, PgcastError, RateLimited, Unauthorized
from backend.interface.http.errors import DB_DOWN
from backend.interface.security.auth import Permission, Principal
from backend.interface.server.state import AppState
from backend.interface.stream.session import Farewell
from backend.interface.stream.ws.frames import Frame, SubId
from backend.services.consume import Delivery

if TYPE_CHECKING:
    from backend.interface.stream.ws.settling import Settling

logger = logging.getLogger(__name__)

WATCHDOG_CHECKS = 4  # a stalled client is dropped within 1.25 x SEND_TIMEOUT
GOING_AWAY = 1001
POLICY_VIOLATION = 1008
INTERNAL_ERROR = 1011
TRY_AGAIN_LATER = 1013

FAREWELL_CLOSE: dict[Farewell, tuple[int, str]] = {
    Farewell.SHUTDOWN: (GOING_AWAY, ""),
    Farewell.EXPIRED: (POLICY_VIOLATION, Farewell.EXPIRED.value),
}

# Failures of one frame or one subscription that the client hears about in an error frame.
REPORTED: tuple[type[BaseException], ...] = (PgcastError, *DB_DOWN)


def _as_error(exc: BaseException) -> PgcastError:
    """A REPORTED failure as a typed error: a lost database link becomes DatabaseUnavailable."""
    if isinstance(exc, PgcastError):
        return exc
    return DatabaseUnavailable(f"the database is unavailable: {exc}")


@dataclass(eq=False)
class Connection:
    """One socket: its subscriptions, the task group they run in and its send lock."""

    websocket: WebSocket
    state: AppState
    tasks: TaskGroup
    principal: Principal | None
    """Who the socket acts for; None until an `auth` frame when the handshake had no token."""
    subscriptions: dict[SubId, anyio.CancelScope] = field(default_factory=dict)
    held: dict[str, tuple[SubId, Delivery]] = field(default_factory=dict)
    settling: Settling | None = None
    """Acks and nacks handed in and not yet answered (`settling.py`); None when there are none."""
    close_code: int | None = None
    close_reason: str = ""
    authenticated: anyio.Event = field(default_factory=anyio.Event)
    sending: anyio.Lock = field(default_factory=lambda: anyio.Lock(fast_acquire=True))
    writing: bool = False
    progress_at: float = 0.0

    def end(self, code: int | None, reason: str = "") -> None:
        """Stop the whole connection; the first reason wins. None: send no close frame."""
        if not self.tasks.cancel_scope.cancel_called:
            self.close_code = code
            self.close_reason = reason
            self.tasks.cancel_scope.cancel()

    def say_farewell(self, farewell: Farewell) -> None:
        """End the connection with the close frame that tells the client why."""
        self.end(*FAREWELL_CLOSE[farewell])

    async def send(self, frame: Frame) -> None:
        await self.write([exactjson.dumps(frame).decode()])

    async def send_error(self, echo: Frame, exc: BaseException) -> None:
        error = _as_error(exc)
        frame = {"op": "error", **echo, "code": error.code, "message": error.message}
        if isinstance(error, RateLimited):
            frame["retry_after"] = error.retry_after
        await self.send(frame)

    def allow(self, permission: Permission, *names: str) -> Principal:
        """The socket's principal, if it is still valid and grants `permission` on `names`."""
        principal = self.principal
        assert principal is not None, "dispatch lets no op but auth through unauthenticated"
        if principal.expired(time.time()):
            raise Unauthorized("the token has expired")
        principal.check(permission, *names)
        return principal

    async def write(self, frames: Iterable[str]) -> None:
        """Send `frames` together and in order, under the send lock.

        `frames` may be a generator, so a long batch is encoded one frame at a time as it
        goes out. Each frame sent counts as progress for `watch`; after a disconnect
        the connection ends and the caller is cancelled at its next await.
        """
        async with self.sending:
            self.progress_at = time.monotonic()
            self.writing = True
            try:
                for frame in frames:
                    await self.websocket.send_text(frame)
                    self.progress_at = time.monotonic()
            except WebSocketDisconnect:
                self.end(None)
            finally:
                self.writing = False

    async def watch(self) -> None:
        """Close with 1001 when the server shuts down; drop a client whose socket accepted
        nothing for SEND_TIMEOUT during a write.

        One watchdog task per connection instead of a timeout scope around every write: a
        scope costs more than the send itself on a busy fan-out. A dropped client gets no
        close frame, because it could not get through either.
        """
        timeout = self.state.settings.send_timeout
        stopping = self.state.lifecycle.shutting_down
        while True:
            with anyio.move_on_after(timeout / WATCHDOG_CHECKS):
                await stopping.wait()
            if stopping.is_set():
                self.say_farewell(Farewell.SHUTDOWN)
                return
            if self.writing and time.monotonic() - self.progress_at >= timeout:
                logger.info("dropped a stalled WebSocket client", extra={"action": "send_timeout"})
                self.end(None)
                return
