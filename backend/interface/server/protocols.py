"""uvicorn's connection protocols, with the limits and log lines pgcast needs.

Headers. uvicorn starts no timer before the first request of a connection, and data
arriving on a kept-alive connection cancels its idle timer, so a client that sends half a
request line holds a connection (and its buffers) for as long as it likes; a few thousand
of them slow every other request. Each request's headers must be complete within
HEADERS_TIMEOUT_SECONDS of the connection opening or of the request's first byte;
otherwise the client gets a 408 and the connection is closed. Bodies, SSE streams and
WebSockets are not affected: the timer stops once the headers are in.

Responses the app gives up on. A stream that drops a stalled client returns with its
response unfinished, which uvicorn reports as an ERROR ("returned without completing
response"). The app has already logged why; here the connection is just closed.

Stream handoff. A stream response parks its body (`stream.handoff`), and the body runs
here, after the whole app has returned: no framework frame stays alive while it is open,
its scope keeps only what is still read, and the finished request's headers and parser
are let go (`lighten_websocket_scope` does the same for an accepted WebSocket). A stream
can be dropped at once (`ChunkWriter.abort`), so it needs no cancel scope of its own.

Lost clients. A stream response may ask to hear at once when its client's connection
closes (`on_connection_lost`); uvicorn only tells a response that is waiting to receive.

Direct writes. A live stream's events may be written by the hub straight into the
connection, without a hop through the stream's task, whenever uvicorn's `send` would have
written them at once: an SSE response that is chunked and open (`chunk_writer`), a
WebSocket that is open and uncompressed (`frame_writer`), and in both cases a socket that
is not backed up. Otherwise the writer refuses and the stream's task sends as usual.

Coalesced WebSocket writes. Frames a socket's tasks send in one turn of the event loop
(a claim's messages, a commit's answers) go out in one write at the end of that turn
(`frame_sender`), not one system call each; any other write to the socket (a direct write,
a close, uvicorn's own `send`) first flushes what is queued, so frames keep their order.

Refused WebSocket handshakes. uvicorn logs a denial response (401/403 with a JSON body)
as an ERROR ("returned without completing handshake"), so anyone could fill the error log
with bad tokens. Here a refusal is complete once its body is sent, and it is logged as one
INFO line with the reason the app gave.

Idle WebSockets. uvicorn keeps an asyncio.Queue, an asyncio.Event and the handshake's
request and response for the life of every socket; here the queue is `inbox.Inbox`, the
event makes its waiters on demand, and the handshake is let go once it is done
(docs/performance.md).

WebSocket keepalive. uvicorn schedules a ping timer per socket, and a pong timer per ping,
and a closed socket's protocol stays alive until its timer is due. Here no socket has a
timer: the process's WebSocket sweep calls `keep_alive` for each socket on its rounds,
which pings a socket whose last ping is WS_PING_INTERVAL_SECONDS old and closes with 1011,
as uvicorn does, one whose ping went unanswered that long.
"""

from __future__ import annotations

import asyncio
import logging
import random
import struct
import weakref
from collections.abc import Callable
from functools import partial
from typing import Any

import httptools
import orjson
from starlette.types import Message
from starlette.types import Scope as AppScope
from uvicorn._types import ASGI3Application, ASGIReceiveCallable, ASGISendCallable, Scope
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.protocols.utils import ClientDisconnected, get_client_addr
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState
from websockets.http11 import Request

from backend.interface.server.inbox import Inbox
from backend.interface.server.on_demand import PipelineOnDemand, WaitersOnDemand
from backend.interface.stream.encoding import WRITE_BYTES
from backend.interface.stream.handoff import close_slot, open_slot, serve_with_handoff

logger = logging.getLogger(__name__)

CYCLE = "pgcast.cycle"  # the request's uvicorn cycle, in its scope while the app runs
LOST = "pgcast.lost"  # a response's callback for the client's connection closing
SCOPE_KEPT = frozenset(
    ("type", "http_version", "method", "path", "root_path", "query_string", "client", CYCLE, LOST)
)
"""What a parked stream's scope keeps: uvicorn's cycle reads the method and, for its
access log, the client, path, query string and HTTP version."""
WS_PROTOCOL = "pgcast.ws"  # the socket's uvicorn protocol, in its scope while the app runs
WEBSOCKET_SCOPE_KEPT = frozenset(
    ("type", "path", "root_path", "query_string", "client", "app", WS_PROTOCOL)
)
"""What an accepted WebSocket's scope keeps: Starlette's `WebSocket` checks the type,
uvicorn logs the client and path, ops find the app's state (`AppState.of`) and count
publishes by client, and pgcast's writers find the protocol."""
PER_SERVER = (
    "app",
    "app_state",
    "asgi_version",
    "close_timeout",
    "config",
    "connections",
    "default_headers",
    "logger",
    "ping_interval",
    "ping_timeout",
    "root_path",
    "tasks",
)
"""`WebSocketProtocol` attributes that are the same for every socket of a server."""
DEFAULT_HEADERS_TIMEOUT = 10.0  # HEADERS_TIMEOUT_SECONDS; `serve --reload` always uses it

_BODY = b'{"error":"request_timeout","message":"the request headers did not arrive in time"}'
TIMEOUT_RESPONSE = b"".join(
    [
        b"HTTP/1.1 408 Request Timeout\r\n",
        b"content-type: application/json\r\n",
        b"content-length: %d\r\n" % len(_BODY),
        b"connection: close\r\n",
        b"\r\n",
        _BODY,
    ]
)


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a headers deadline, quiet abandoned responses,
    streams handed off outside the app, and less memory per idle connection."""

    header_timeout: float = DEFAULT_HEADERS_TIMEOUT
    _deadline: asyncio.TimerHandle | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pipeline = PipelineOnDemand()  # type: ignore[assignment]

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        writable = WaitersOnDemand()
        writable.set()
        self.flow._is_writable_event = writable
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._deadline is None:
            self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        cycle = self.cycle
        super().connection_lost(exc)
        if cycle is not None and not cycle.response_complete:
            lost = cycle.scope.get(LOST)
            if callable(lost):
                lost()

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        message_event = WaitersOnDemand()
        if cycle.message_event.is_set():  # a pipelined request whose body is already in
            message_event.set()
        cycle.message_event = message_event

        async def run_then_close_unfinished(
            scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
        ) -> None:
            # The handoff (`stream.handoff`) done here rather than in a function of its
            # own: a parked body runs under this frame for as long as it streams.
            scope[CYCLE] = cycle  # type: ignore[literal-required]
            app_scope: AppScope = scope  # type: ignore[assignment]
            parked = open_slot(app_scope)
            try:
                try:
                    await app(scope, receive, send)
                finally:
                    close_slot(app_scope)
                if parked:
                    self._lighten(app_scope)
                    await parked.pop()(receive, send)  # type: ignore[arg-type]
            finally:
                del scope[CYCLE]  # type: ignore[misc]
                scope.pop(LOST, None)  # type: ignore[misc]
            if cycle.response_started and not cycle.response_complete:
                cycle.disconnected = True
                self.transport.close()

        super()._start_asgi_task(cycle, run_then_close_unfinished)

    def _lighten(self, scope: AppScope) -> None:
        """A parked stream body is about to run long after the app: its scope keeps only
        what uvicorn still reads (HEAD handling, the access log) and pgcast's own keys, and
        the request's headers and its finished parser go (an idle SSE stream holds about
        2 KiB less)."""
        _keep_only(scope, SCOPE_KEPT)
        if self.scope is scope:
            self.headers = None  # type: ignore[assignment]  # as before a request begins
            if not self.cycle.more_body:  # the request is parsed to its end
                self.parser = None  # type: ignore[assignment]  # made again by data_received

    def data_received(self, data: bytes) -> None:
        """The parser let go while a stream runs (`_lighten`) is made again if the client
        sends more (a pipelined request); it starts at a message boundary."""
        if self.parser is None:
            self.parser = httptools.HttpRequestParser(self)
            self.parser.set_dangerous_leniencies(lenient_data_after_close=True)
        super().data_received(data)

    def _arm(self) -> None:
        self._deadline = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _headers_too_slow(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        logger.debug(
            "closed a connection whose request headers took over %s s",
            self.header_timeout,
            extra={"action": "headers_timeout"},
        )
        self.transport.write(TIMEOUT_RESPONSE)
        self.transport.close()


class ChunkWriter:
    """For a started, chunked response served by `HttpProtocol`: called with bytes already
    framed as whole chunks, writes them now (True), or refuses (False) when uvicorn's
    `send` would have to wait or the response is over. A slotted object rather than a
    closure: every idle SSE stream holds one."""

    __slots__ = ("cycle",)

    def __init__(self, cycle: RequestResponseCycle) -> None:
        self.cycle = cycle

    def __call__(self, chunks: bytes) -> bool:
        cycle = self.cycle
        if cycle.disconnected or cycle.response_complete or cycle.flow.write_paused:
            return False
        cycle.transport.write(chunks)
        return True

    def abort(self) -> None:
        """Drop the connection at once: the server then releases a waiting write and calls
        the `on_connection_lost` callback."""
        self.cycle.transport.abort()


def chunk_writer(scope: AppScope) -> ChunkWriter | None:
    """The response's `ChunkWriter`; None under any other server, or for a response that
    is not chunked."""
    cycle = scope.get(CYCLE)
    if not isinstance(cycle, RequestResponseCycle) or not cycle.chunked_encoding:
        return None
    return ChunkWriter(cycle)


def on_connection_lost(scope: AppScope, callback: Callable[[], None]) -> bool:
    """Have `callback` run when the client's connection closes before the response ends;
    False under any other server (nothing will call it)."""
    if CYCLE not in scope:
        return False
    scope[LOST] = callback
    return True


def frame_writer(scope: AppScope) -> Callable[[bytes], bool] | None:
    """For an accepted WebSocket served by `WebSocketProtocol` without compression: a
    function that writes bytes already framed as whole unmasked frames now (True), or
    refuses (False) when uvicorn's `send` would have to wait or the socket is closing.
    None under any other server, before the handshake, or with compression."""
    protocol = scope.get(WS_PROTOCOL)
    if not isinstance(protocol, WebSocketProtocol) or not protocol.handshake_complete:
        return None
    if protocol.conn.extensions:
        return None
    return FrameWriter(protocol)


class FrameWriter:
    """`frame_writer`'s writer: a slotted object rather than a closure, as every idle
    WebSocket subscription holds one."""

    __slots__ = ("protocol",)

    def __init__(self, protocol: WebSocketProtocol) -> None:
        self.protocol = protocol

    def __call__(self, frames: bytes) -> bool:
        protocol = self.protocol
        # A close received or sent, or a lost connection, leaves the transport closing.
        if protocol.close_sent or protocol.transport.is_closing():
            return False
        if not protocol.writable.is_set():
            return False
        protocol.write_now(frames)
        return True


def lighten_websocket_scope(scope: AppScope) -> None:
    """An accepted WebSocket served by `WebSocketProtocol` is about to run long after the
    app: its scope keeps only what uvicorn (its access log) and pgcast still read, and the
    handshake's headers go. Under any other server the scope is left as it is."""
    if isinstance(scope.get(WS_PROTOCOL), WebSocketProtocol):
        _keep_only(scope, WEBSOCKET_SCOPE_KEPT)


def _keep_only(scope: AppScope, keys: frozenset[str]) -> None:
    """Drop every other key, in place: the server and the stream share this dict."""
    kept = {key: value for key, value in scope.items() if key in keys}
    scope.clear()
    scope.update(kept)


def drivable(scope: AppScope) -> Inbox[Message] | None:
    """Under `WebSocketProtocol`, the inbox of an accepted socket that the app may serve
    without a task of its own: once the app sets the inbox's `listener`, the protocol keeps
    the socket open after the app returns, and calls the listener whenever a message
    arrives while nobody waits to receive. Under any other server, None: the app must go
    on reading from its own task."""
    protocol = scope.get(WS_PROTOCOL)
    if not isinstance(protocol, WebSocketProtocol):
        return None
    inbox: Inbox[Message] = protocol.queue  # type: ignore[assignment]
    return inbox


def let_go(scope: AppScope) -> None:
    """A driven socket has ended: drop the protocol from the scope, which would otherwise
    keep the two in a reference cycle, and end the connection unless a close handshake is
    under way or the transport is closing already. That leaves a socket ended without a
    close frame, a client dropped for not reading: it is reset, since a graceful close
    would wait for frames it will never read, keeping them and the connection."""
    protocol = scope.pop(WS_PROTOCOL, None)
    if isinstance(protocol, WebSocketProtocol):
        protocol.queue.listener = None  # type: ignore[attr-defined]
        if protocol.close_timer is None and not protocol.transport.is_closing():
            protocol.transport.abort()


def keep_alive(scope: AppScope, interval: float) -> None:
    """A sweep round's keepalive for a socket served by `WebSocketProtocol`; under any other
    server, that server's own keepalive applies."""
    protocol = scope.get(WS_PROTOCOL)
    if isinstance(protocol, WebSocketProtocol):
        protocol.keepalive(interval)


def frame_sender(scope: AppScope) -> Callable[[bytes], bool] | None:
    """Like `frame_writer`, but the frames are queued and go out in one write with every
    other frame the socket's tasks queue in this turn of the event loop. When it refuses
    (backed up, closing) it has sent what was queued before, so uvicorn's `send` may
    follow in order."""
    protocol = scope.get(WS_PROTOCOL)
    if not isinstance(protocol, WebSocketProtocol) or not protocol.handshake_complete:
        return None
    if protocol.conn.extensions:
        return None
    return protocol.send_soon


def with_header_timeout(seconds: float) -> type[HttpProtocol]:
    """The protocol class to give uvicorn's `http` option, with this deadline."""

    class Protocol(HttpProtocol):
        header_timeout = seconds

    return Protocol


class ServerWide:
    """What uvicorn's WebSocket protocol keeps on every socket although it is the same for
    all the sockets of one server: held once per server (`WebSocketProtocol`)."""

    __slots__ = (*PER_SERVER, "handoff")
    app: Any
    config: Any
    handoff: Any
    """`app` inside the handoff (`WebSocketProtocol.app`)."""

    def __init__(self) -> None:
        for name in self.__slots__:
            setattr(self, name, None)


_SERVERS: weakref.WeakKeyDictionary[ServerState, ServerWide] = weakref.WeakKeyDictionary()


def _server_wide(name: str) -> Any:
    """An attribute of the socket's `ServerWide` instead of its own dictionary."""

    def read(protocol: WebSocketProtocol) -> Any:
        return getattr(protocol._server, name)

    def write(protocol: WebSocketProtocol, value: Any) -> None:
        setattr(protocol._server, name, value)

    return property(read, write)


def _no_timer(name: str) -> Any:
    """uvicorn's per-socket keepalive timers, which `WebSocketProtocol` never starts."""

    def read(_protocol: WebSocketProtocol) -> None:
        return None

    def write(_protocol: WebSocketProtocol, value: object) -> None:
        if value is not None:
            raise RuntimeError(f"WebSocketProtocol starts no {name}: the sweep pings")

    return property(read, write)


class WebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's WebSocket protocol, leaner per socket, that logs a refused handshake as
    one INFO line.

    CPython shares the keys of instance dictionaries between the instances of a class, so
    each holds only its values (about 0.3 KiB here), as long as there are at most 29 of
    them; uvicorn's protocol sets more than that, and every socket's dictionary then costs
    1.6 KiB. The values that are the same for every socket of a server live once, on its
    `ServerWide`, and the keepalive timers are never started (the sweep pings), so a socket
    keeps fewer than 30 (`ws_handoff_test.py` checks it through a socket's whole life).
    """

    _refusal_status: int | None = None
    _refusal_body: bytes = b""
    _outbox: bytearray | None = None
    """Frames queued in this turn of the event loop (`send_soon`); None when there are none."""

    app_state = _server_wide("app_state")
    asgi_version = _server_wide("asgi_version")
    close_timeout = _server_wide("close_timeout")
    config = _server_wide("config")
    connections = _server_wide("connections")
    default_headers = _server_wide("default_headers")
    logger = _server_wide("logger")
    ping_interval = _server_wide("ping_interval")
    ping_timeout = _server_wide("ping_timeout")
    root_path = _server_wide("root_path")
    tasks = _server_wide("tasks")
    ping_timer = _no_timer("ping timer")
    pong_timer = _no_timer("pong timer")

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        server = _SERVERS.get(server_state)
        if server is None or server.config is not config:  # one per server and its config
            server = _SERVERS[server_state] = ServerWide()
        self._server = server
        super().__init__(config, server_state, app_state, _loop)
        self.queue = Inbox()  # type: ignore[assignment]
        self.writable = WaitersOnDemand()
        self.writable.set()

    @property
    def app(self) -> Any:
        """The app with the handoff outside it, as `HttpProtocol` runs it for streams: no
        middleware's frame stays alive under an accepted socket. Made once per server."""
        return self._server.handoff

    @app.setter
    def app(self, app: Any) -> None:
        server = self._server
        if server.app is not app:
            server.app = app
            server.handoff = partial(serve_with_handoff, app)

    def handle_connect(self, event: Request) -> None:
        """The scope names this protocol while the app runs (its task is made here and has
        not started yet), without a coroutine frame of pgcast's around uvicorn's."""
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None:
            scope[WS_PROTOCOL] = self

    def on_task_complete(self, task: asyncio.Task[None]) -> None:
        super().on_task_complete(task)
        if not self.driven:
            self.scope.pop(WS_PROTOCOL, None)  # type: ignore[misc]

    @property
    def driven(self) -> bool:
        """The app went on serving the socket without uvicorn's task (`drivable`)."""
        return self.queue.listener is not None  # type: ignore[attr-defined]

    async def run_asgi(self) -> None:
        """uvicorn's, except that a driven socket stays open once the app returns."""
        try:
            result = await self.app(self.scope, self.receive, self.send)
        except ClientDisconnected:
            pass
        except BaseException:
            self.logger.exception("Exception in ASGI application\n")
            self.send_500_response()
        else:
            if not self.handshake_complete:
                self.logger.error("ASGI callable returned without completing handshake.")
                self.send_500_response()
            elif result is not None:
                self.logger.error("ASGI callable should return None, but returned '%s'.", result)
            elif self.driven:
                return
        if self.close_timer is None:
            self.transport.close()

    def start_keepalive(self) -> None:
        """No timer: the sweep pings (`keepalive`); the first interval starts now."""
        self.ping_sent_at = self.loop.time()

    def keepalive(self, interval: float) -> None:
        """Ping when `interval` has passed since the last ping and it was answered; close
        with 1011 (uvicorn's `keepalive_timeout`) when it was not."""
        if not self.handshake_complete or self.close_sent or self.transport.is_closing():
            return
        now = self.loop.time()
        if now - self.ping_sent_at < interval:
            return
        if self.pending_ping_payload is not None:
            self.keepalive_timeout()
            return
        self.flush_frames()
        self.pending_ping_payload = struct.pack("!I", random.getrandbits(32))
        self.ping_sent_at = now
        self.conn.send_ping(self.pending_ping_payload)
        self.transport.write(b"".join(self.conn.data_to_send()))

    def send_soon(self, frames: bytes) -> bool:
        """Queue whole unmasked frames for one write at the end of this loop turn (at once
        when WRITE_BYTES are queued); False, with what was queued before sent, when the
        socket is backed up or closing."""
        if self.close_sent or self.transport.is_closing():
            self._outbox = None
            return False
        if not self.writable.is_set():
            self.flush_frames()
            return False
        outbox = self._outbox
        if outbox is None:
            outbox = self._outbox = bytearray(frames)
            self.loop.call_soon(self.flush_frames)
        else:
            outbox += frames
        if len(outbox) >= WRITE_BYTES:
            self.flush_frames()  # the transport's flow control sees it now
        return True

    def write_now(self, frames: bytes) -> None:
        """Write whole frames at once, after those queued before them."""
        outbox = self._outbox
        if outbox is None:
            self.transport.write(frames)
        else:
            self._outbox = None
            outbox += frames
            self.transport.write(outbox)

    def flush_frames(self) -> None:
        """Write what `send_soon` queued, unless the socket is closing by now."""
        outbox = self._outbox
        if outbox is not None:
            self._outbox = None
            if not self.close_sent and not self.transport.is_closing():
                self.transport.write(outbox)

    async def send(self, message: Message) -> None:  # type: ignore[override]
        self.flush_frames()
        refusing = not self.handshake_complete
        if not refusing and self.close_sent:
            # The connection is over (the parser failed it, keepalive or the app closed
            # it): the app sees the disconnect uvicorn reports for a lost connection, not
            # uvicorn's error for a message out of turn.
            raise ClientDisconnected
        await super().send(message)  # type: ignore[arg-type]
        if not refusing:
            return
        kind = message["type"]
        if kind == "websocket.accept" and self.handshake_complete:
            # Read only during the handshake; the request also stays referenced by the
            # frame parser, so its headers (the scope has a copy) are emptied too.
            self.request.headers.clear()
            del self.request, self.response
        elif kind == "websocket.close":
            self._log_refusal(403, message.get("reason") or "closed before the handshake")
        elif kind == "websocket.http.response.start":
            self._refusal_status = message["status"]
        elif kind == "websocket.http.response.body":
            self._refusal_body += message.get("body", b"")
            if not message.get("more_body", False):
                self.handshake_complete = True
                self._log_refusal(self._refusal_status or 0, _reason(self._refusal_body))

    def _log_refusal(self, status: int, reason: str) -> None:
        logger.info(
            "%s - WebSocket handshake refused (%d): %s",
            get_client_addr(self.scope),
            status,
            reason,
            extra={"action": "ws_refused"},
        )


class InvalidUtf8AsInfo(logging.Filter):
    """uvicorn logs a text frame that is not UTF-8 as an error with its traceback, but it
    is the client's fault and the socket just closes with 1007: one INFO line says so."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == "Invalid UTF-8 sequence received from client.":
            record.levelno, record.levelname = logging.INFO, logging.getLevelName(logging.INFO)
            record.exc_info = record.exc_text = None
            record.msg = "WebSocket closed with 1007: a text frame was not valid UTF-8"
        return True


def _reason(body: bytes) -> str:
    """The `message` of a JSON error body, or the start of whatever else it is."""
    try:
        decoded = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:200].decode("utf-8", "replace") or "no reason given"
    message = decoded.get("message") if isinstance(decoded, dict) else None
    return message if isinstance(message, str) else "no reason given"
