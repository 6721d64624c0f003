"""Closing connections that do not finish their request headers in time.

uvicorn starts no timer before the first request of a connection, and data arriving on a
kept-alive connection cancels its idle timer, so a client that sends half a request line
holds a connection (and its buffers) for as long as it likes; a few thousand of them slow
every other request. Each request's headers must therefore be complete within
HEADERS_TIMEOUT_SECONDS of the connection opening or of the request's first byte;
otherwise the client gets a 408 and the connection is closed. Bodies, SSE streams and
WebSockets are not affected: the timer stops once the headers are in.
"""

from __future__ import annotations

import asyncio
import logging

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

logger = logging.getLogger(__name__)

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


class HeaderDeadlineProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline for each request's headers."""

    header_timeout: float = 10.0
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


def with_header_timeout(seconds: float) -> type[HeaderDeadlineProtocol]:
    """The protocol class to give uvicorn's `http` option, with this deadline."""

    class Protocol(HeaderDeadlineProtocol):
        header_timeout = seconds

    return Protocol
