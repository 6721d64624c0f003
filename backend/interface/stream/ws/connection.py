"""One open socket: its state, its turn-taking for writes, and how it ends.

Every task writes its own frames to the socket, one writer at a time, so a subscription's
events go out from the task that took them from its buffer, with no hop through a writer
task; frames from one write stay together and in order. A slow client holds its
subscriptions back (the hub then moves them to catch-up, so memory stays bounded and
nothing is lost), and a client that accepts nothing for SEND_TIMEOUT is dropped by the
process's `WsSweep` without a close frame, because a close frame could not get through
either. It resumes by subscribing again with `after` set to the last id it saw.

An idle socket is just this object: no task, no watcher, no lock and no event of its own
(writers queue for their turn only when two write at once). Its work runs in tasks of the
process's WebSocket task group (`spawn`), each in its own cancel scope and only while
there is work; `end` cancels them, and `close_down` waits for them before the close frame.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from itertools import chain
from typing import TYPE_CHECKING, Protocol, TypeVarTuple

import anyio
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketDisconnected

from backend.core import exactjson
from backend.core.errors import DatabaseUnavailable, PgcastError, RateLimited, Unauthorized
from backend.interface.http.errors import DB_DOWN
from backend.interface.security.auth import Permission, Principal
from backend.interface.server.protocols import frame_sender, let_go
from backend.interface.server.state import AppState
from backend.interface.stream.encoding import WRITE_BYTES, ws_text_frame
from backend.interface.stream.session import Farewell
from backend.interface.stream.ws.frames import (
    GOING_AWAY,
    INTERNAL_ERROR,
    POLICY_VIOLATION,
    Frame,
    SubId,
)
from backend.interface.stream.ws.tasks import SocketTasks
from backend.services.consume import Delivery

if TYPE_CHECKING:
    from backend.interface.stream.ws.settling import Settling

logger = logging.getLogger(__name__)

Ts = TypeVarTuple("Ts")
CLOSE_TIMEOUT = 1.0


FAREWELL_CLOSE: dict[Farewell, tuple[int | None, str]] = {
    Farewell.SHUTDOWN: (GOING_AWAY, ""),
    Farewell.EXPIRED: (POLICY_VIOLATION, Farewell.EXPIRED.value),
    Farewell.GONE: (None, ""),
}

# Failures of one frame or one subscription that the client hears about in an error frame.
REPORTED: tuple[type[BaseException], ...] = (PgcastError, *DB_DOWN)


def _unless_cancelled(subscription: Cancellable | None, frame: Frame) -> Iterator[bytes]:
    """The frame, made once the socket is the write's (see `Connection.write`), unless
    `subscription` has been cancelled by then."""
    if subscription is None or not subscription.cancel_called:
        yield exactjson.dumps(frame)


def _as_error(exc: BaseException) -> PgcastError:
    """A REPORTED failure as a typed error: a lost database link becomes DatabaseUnavailable."""
    if isinstance(exc, PgcastError):
        return exc
    return DatabaseUnavailable(f"the database is unavailable: {exc}")


class Cancellable(Protocol):
    """What `unsubscribe` and the end of a socket stop; no frame of its id follows `cancel`."""

    @property
    def cancel_called(self) -> bool: ...

    def cancel(self) -> None: ...


class Connection:
    """One socket: its subscriptions, the tasks that serve them, and who writes now."""

    __slots__ = (
        "_principal",
        "_running",
        "_stopped",
        "_turns",
        "close_code",
        "close_reason",
        "driven",
        "ended",
        "held",
        "host",
        "nudge",
        "opened_at",
        "progress_at",
        "reading",
        "settling",
        "state",
        "subscriptions",
        "tasks",
        "websocket",
        "writing",
    )

    def __init__(
        self,
        websocket: WebSocket,
        state: AppState,
        tasks: SocketTasks,
        principal: Principal | None,
    ) -> None:
        self.websocket = websocket
        self.state = state
        self.tasks = tasks
        """Where the socket's tasks run: the process's, shared by every socket (`spawn`)."""
        self.host: anyio.CancelScope | None = None
        """The scope of the task that reads the socket's frames for as long as it is open
        (under servers other than pgcast's), which `end` cancels."""
        self.driven = False
        """No task reads for as long as the socket is open: one starts when frames arrive
        (`ws.driven`), and `end` starts the one that closes it."""
        self.reading = False
        """A task reads the frames that have arrived (driven sockets)."""
        self.nudge: anyio.Event | None = None
        """Set to wake that reader while it waits between frames (`nudge_reader`)."""
        self._running: set[anyio.CancelScope] | None = None
        """The scopes of the socket's tasks that run now; None when none does."""
        self._stopped: anyio.Event | None = None
        """Set when the last of them has finished, for `stopped` to wait on."""
        self.ended = False
        self._principal = principal
        self.subscriptions: dict[SubId, Cancellable] = {}
        """What serves each subscription id: a consumer's cancel scope, or an event
        subscription (`runners.EventSubscription`)."""
        self.held: dict[str, tuple[SubId, Delivery]] = {}
        self.settling: Settling | None = None
        """Acks and nacks handed in and not yet answered (`settling.py`); None when there
        are none."""
        self.close_code: int | None = None
        self.close_reason = ""
        self.writing = False
        """A write holds the socket; `progress_at` is when it last got a frame out."""
        self.opened_at = self.progress_at = time.monotonic()
        self._turns: list[anyio.Event] | None = None
        """Writers waiting for the socket, first come first served; None when none wait."""

    @property
    def principal(self) -> Principal | None:
        """Who the socket acts for; None until an `auth` frame when the handshake had no
        token."""
        return self._principal

    @principal.setter
    def principal(self, principal: Principal | None) -> None:
        self._principal = principal
        self.state.ws.reschedule(self)

    def end(self, code: int | None, reason: str = "") -> None:
        """Stop the whole connection; the first reason wins. None: send no close frame."""
        if self.ended:
            return
        self.ended = True
        self.close_code = code
        self.close_reason = reason
        if self.host is not None:
            self.host.cancel()
        for scope in self._running or ():
            scope.cancel()
        if self.driven and not self.tasks.start(self.close_down):
            # The server is shutting down and starts no task: let go of it all at once.
            self._stop_serving()
            self._release()

    def nudge_reader(self) -> None:
        """Wake a driven socket's reader that waits between frames: a frame has arrived, or
        the socket's last queue consumer has ended (the reader then ends too)."""
        if self.nudge is not None:
            self.nudge.set()

    def open(self) -> None:
        """Count the socket as open: the connections gauge, shutdown's wait for streams to
        close, the sweep."""
        state = self.state
        state.metrics.connections.labels("ws").inc()
        state.lifecycle.stream_opened()
        state.ws.add(self)

    async def close_down(self) -> None:
        """Once nothing reads the socket's frames any more: stop all it serves, wait for its
        tasks, send the close frame if `end` gave a code, and give its slot back."""
        try:
            self._stop_serving()
            self.end(None)
            with anyio.CancelScope(shield=True):
                await self.stopped()
            if self.close_code is not None:
                with (
                    contextlib.suppress(WebSocketDisconnect, WebSocketDisconnected),
                    anyio.move_on_after(CLOSE_TIMEOUT),
                ):
                    await self.websocket.close(self.close_code, self.close_reason)
        except Exception:
            logger.exception("WebSocket close failed", extra={"action": "ws_error"})
        finally:
            self._release()

    def _stop_serving(self) -> None:
        """Out of the sweep, and every subscription stopped."""
        self.state.ws.discard(self)
        self.stop_subscriptions()

    def _release(self) -> None:
        """Give back what `open` took; a driven socket's protocol closes its transport."""
        state = self.state
        state.metrics.connections.labels("ws").dec()
        state.lifecycle.stream_closed()
        state.guard.slots.release()
        if self.driven:
            let_go(self.websocket.scope)

    def spawn(self, work: Callable[[*Ts], Awaitable[object]], *args: *Ts) -> bool:
        """Run `work(*args)` in a task of its own until it returns or the connection ends
        (at once cancelled if it has ended); False, and nothing started, once the server
        is shutting down. An error it does not handle ends the connection with 1011, as
        it would have ended a task group of the socket's own."""
        scope = anyio.CancelScope()
        if self.ended:
            scope.cancel()
        running = self._running
        if running is None:
            running = self._running = set()
        running.add(scope)  # from now on `stopped` waits for it
        if self.tasks.start(self._guarded, work, args, scope):
            return True
        self._finished(scope)
        return False

    async def _guarded(
        self, work: Callable[[*Ts], Awaitable[object]], args: tuple[*Ts], scope: anyio.CancelScope
    ) -> None:
        try:
            with scope:
                await work(*args)
        except Exception:
            logger.exception("WebSocket session failed", extra={"action": "ws_error"})
            self.end(INTERNAL_ERROR)
        except anyio.get_cancelled_exc_class():
            if self.tasks.open:  # neither the socket's nor the server's: `SocketTasks` logs it
                self.end(INTERNAL_ERROR)
            raise
        finally:
            self._finished(scope)

    def _finished(self, scope: anyio.CancelScope) -> None:
        running = self._running
        if running is not None:
            running.discard(scope)
            if not running:
                self._running = None
                if self._stopped is not None:
                    self._stopped.set()

    async def stopped(self) -> None:
        """Wait until none of the socket's tasks runs (after `end`, none starts again)."""
        while self._running:
            self._stopped = anyio.Event()
            await self._stopped.wait()
        self._stopped = None

    def stop_subscriptions(self) -> None:
        """Stop everything the socket serves, parked subscriptions included (they have no
        task for `end` to cancel)."""
        for running in list(self.subscriptions.values()):
            running.cancel()
        self.subscriptions.clear()

    def say_farewell(self, farewell: Farewell) -> None:
        """End the connection with the close frame that tells the client why."""
        self.end(*FAREWELL_CLOSE[farewell])

    async def send(self, frame: Frame, unless: Cancellable | None = None) -> None:
        """One frame; with `unless`, only if that subscription is not cancelled by the time
        the socket is this write's (`unsubscribed` may be out already)."""
        await self.write(_unless_cancelled(unless, frame))

    async def send_error(
        self, echo: Frame, exc: BaseException, unless: Cancellable | None = None
    ) -> None:
        """The `error` frame for `exc` (`unless` as for `send`)."""
        error = _as_error(exc)
        frame = {"op": "error", **echo, "code": error.code, "message": error.message}
        if isinstance(error, RateLimited):
            frame["retry_after"] = error.retry_after
        await self.send(frame, unless)

    def allow(self, permission: Permission, *names: str) -> Principal:
        """The socket's principal, if it is still valid and grants `permission` on `names`."""
        principal = self.principal
        assert principal is not None, "dispatch lets no op but auth through unauthenticated"
        if principal.expired(time.time()):
            raise Unauthorized("the token has expired")
        principal.check(permission, *names)
        return principal

    async def write(self, payloads: Iterable[bytes]) -> None:
        """Send text frames of these JSON `payloads` together and in order, once no other
        write holds the socket.

        `payloads` may be a generator: it runs once the socket is this write's. Under
        pgcast's server, a batch of up to WRITE_BYTES joins the socket's other frames of
        this loop turn in one write (`frame_sender`). A larger batch, or any batch while
        the socket is backed up, goes through uvicorn's `send` frame by frame, each frame
        encoded as it goes and waiting for the socket to drain, so a stalled client holds
        little more than one frame. Each frame sent counts as progress for the sweep;
        after a disconnect the connection ends and the caller is cancelled at its next
        await.
        """
        await self._take_turn()
        self.progress_at = time.monotonic()
        try:
            rest = iter(payloads)
            head: list[bytes] = []
            send_soon = frame_sender(self.websocket.scope)
            if send_soon is not None:
                size = 0
                for payload in rest:
                    head.append(payload)
                    size += len(payload)
                    if size > WRITE_BYTES:
                        break
                else:
                    if send_soon(b"".join(map(ws_text_frame, head))):
                        return
            for payload in chain(head, rest):
                await self.websocket.send_text(payload.decode())
                self.progress_at = time.monotonic()
        except (WebSocketDisconnect, WebSocketDisconnected):
            # The first write after the end raises the one, every later write the other.
            self.end(None)
        finally:
            self._pass_turn()

    async def _take_turn(self) -> None:
        """Hold the socket for one write: at once when it is free (no checkpoint), else
        after the writers that came first."""
        if not self.writing:
            self.writing = True
            return
        turn = anyio.Event()
        if self._turns is None:
            self._turns = []
        self._turns.append(turn)
        try:
            await turn.wait()
        except BaseException:
            if turn.is_set():
                self._pass_turn()  # handed the socket while being cancelled: hand it on
            elif self._turns is not None:
                self._turns.remove(turn)
                if not self._turns:
                    self._turns = None
            raise

    def _pass_turn(self) -> None:
        """Hand the socket to the next waiting writer, or free it."""
        turns = self._turns
        if not turns:
            self.writing = False
            return
        turn = turns.pop(0)
        if not turns:
            self._turns = None
        self.progress_at = time.monotonic()
        turn.set()
