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

Refused WebSocket handshakes. uvicorn logs a denial response (401/403 with a JSON body)
as an ERROR ("returned without completing handshake"), so anyone could fill the error log
with bad tokens. Here a refusal is complete once its body is sent, and it is logged as one
INFO line with the reason the app gave.

Idle WebSockets. uvicorn keeps an asyncio.Queue, an asyncio.Event and the handshake's
request and response for the life of every socket; here the first two are the lean ones
of `waits` and the handshake is let go once it is done (docs/performance.md).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
from starlette.types import Message
from uvicorn._types import ASGI3Application, ASGIReceiveCallable, ASGISendCallable, Scope
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.protocols.utils import get_client_addr
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from backend.interface.server.waits import Gate, Inbox

logger = logging.getLogger(__name__)

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
    """uvicorn's httptools protocol with a headers deadline and quiet abandoned responses."""

    header_timeout: float = DEFAULT_HEADERS_TIMEOUT
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
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
        super().connection_lost(exc)

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        async def run_then_close_unfinished(
            scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
        ) -> None:
            await app(scope, receive, send)
            if cycle.response_started and not cycle.response_complete:
                cycle.disconnected = True
                self.transport.close()

        super()._start_asgi_task(cycle, run_then_close_unfinished)

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


def with_header_timeout(seconds: float) -> type[HttpProtocol]:
    """The protocol class to give uvicorn's `http` option, with this deadline."""

    class Protocol(HttpProtocol):
        header_timeout = seconds

    return Protocol


class WebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's WebSocket protocol, leaner per socket, that logs a refused handshake as
    one INFO line."""

    _refusal_status: int | None = None
    _refusal_body: bytes = b""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queue = Inbox()  # type: ignore[assignment]
        self.writable = Gate()  # type: ignore[assignment]
        self.writable.set()

    async def send(self, message: Message) -> None:  # type: ignore[override]
        refusing = not self.handshake_complete
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


def _reason(body: bytes) -> str:
    """The `message` of a JSON error body, or the start of whatever else it is."""
    try:
        decoded = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:200].decode("utf-8", "replace") or "no reason given"
    message = decoded.get("message") if isinstance(decoded, dict) else None
    return message if isinstance(message, str) else "no reason given"
