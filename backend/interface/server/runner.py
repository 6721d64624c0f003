"""Running uvicorn from our own entry point, so shutdown reaches open streams at once.

uvicorn waits for open connections before running lifespan teardown, and SSE/WebSocket
streams never end by themselves. Our `Server.handle_exit` therefore also sets the app's
shutdown event, which every stream watches, so they say goodbye and close within the grace
period instead of holding the process up. Our `Server.shutdown` waits briefly for open
WebSockets to send their own close frame (1001) before uvicorn fails the rest with 1012.

When the engine cannot start (a missing CAPTURE_TABLES table, a database that went away
after migrating), uvicorn would log the lifespan's traceback and exit with its own status 3.
Instead the typed error the app recorded is raised from `Server.startup`, so the command
line prints it as one line with its documented exit status.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import socket
from collections.abc import Iterator
from types import FrameType
from typing import Any

import anyio
import sniffio
import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend.core.errors import CannotListen
from backend.core.settings import Settings
from backend.interface.server.app import create_app
from backend.interface.server.lifecycle import Lifecycle
from backend.interface.server.limits import raise_open_files_limit
from backend.interface.server.protocols import (
    HttpProtocol,
    InvalidUtf8AsInfo,
    WebSocketProtocol,
    with_header_timeout,
)

GRACEFUL_SECONDS = 5
# CPython collects its youngest objects every 700 new containers, a few requests' worth
# for a busy server, and each collection walks every young object still alive (most die
# by reference counting anyway). Every 10,000 measured 10-24% less server CPU per
# single-event publish at 64 clients.
GC_YOUNG_THRESHOLD = 10_000
STREAM_GOODBYE_SECONDS = 2


class QuietStartupFailure(logging.Filter):
    """Drops uvicorn's error lines about a failed start-up that the command line reports
    (a typed start-up error, or the address it could not listen on)."""

    def __init__(self, lifecycle: Lifecycle) -> None:
        super().__init__()
        self.lifecycle = lifecycle

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        return self.lifecycle.startup_error is None and not isinstance(record.msg, OSError)


def report_startup_errors(app: ASGIApp, lifecycle: Lifecycle) -> ASGIApp:
    """Wrap `app` so a typed start-up error reaches uvicorn without its traceback text."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await app(scope, receive, send)
            return

        async def send_without_traceback(message: Message) -> None:
            if message["type"] == "lifespan.startup.failed" and lifecycle.startup_error:
                message = {"type": "lifespan.startup.failed", "message": ""}
            await send(message)

        try:
            await app(scope, receive, send_without_traceback)
        except Exception as exc:
            if exc is not lifecycle.startup_error:
                raise

    return wrapped


class Server(uvicorn.Server):
    """uvicorn.Server that tells the app's streams to finish when a signal arrives."""

    def __init__(self, config: uvicorn.Config, lifecycle: Lifecycle) -> None:
        super().__init__(config)
        self.lifecycle = lifecycle
        lifecycle.server_tables = lambda: (self.server_state.connections, self.server_state.tasks)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """A requested stop is a clean exit (status 0), not a re-raised signal."""
        with super().capture_signals():
            yield
            self._captured_signals.clear()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """Raise the app's typed start-up error rather than exit with uvicorn's status.

        Everything this server runs (lifespan, connections, their tasks) inherits the
        context set here, which names asyncio as the async library: anyio then asks
        sniffio once per call instead of looking up the current task each time (every
        Event, cancel scope and timeout of every request does that, and on Python 3.11
        each lookup is a system call)."""
        sniffio.current_async_library_cvar.set("asyncio")
        try:
            await super().startup(sockets)
        except SystemExit as exit_:
            if self.lifecycle.startup_error is not None:
                raise self.lifecycle.startup_error from None
            raise cannot_listen(self.config, exit_) or exit_ from None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.lifecycle.begin_shutdown()
        super().handle_exit(sig, frame)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Stop accepting, give open WebSockets a moment to close with 1001, then finish."""
        for server in self.servers:
            server.close()
        with anyio.move_on_after(STREAM_GOODBYE_SECONDS):
            await self.lifecycle.streams_closed()
        await super().shutdown(sockets)


def cannot_listen(config: uvicorn.Config, exit_: SystemExit) -> CannotListen | None:
    """The typed error for uvicorn's exit after it could not bind (it logs the OSError and
    exits from within its handler, so the OSError is the exit's context); None otherwise."""
    reason = exit_.__context__
    if not isinstance(reason, OSError):
        return None
    problem = reason.strerror or str(reason)
    return CannotListen(f"cannot listen on {config.host}:{config.port}: {problem}")


def protocol_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's options that every way of serving shares."""
    return {
        "log_level": settings.log_level.lower(),
        "ws": WebSocketProtocol,
        "ws_max_size": settings.ws_max_frame_bytes,
        "ws_ping_interval": settings.ws_ping_interval_seconds,
        "ws_ping_timeout": settings.ws_ping_interval_seconds,
        "ws_per_message_deflate": settings.ws_compression,
    }


def serve(
    settings: Settings,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    sockets: list[socket.socket] | None = None,
) -> None:
    """One server process until a signal, on `sockets` when given, else on host:port."""
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    lifecycle = Lifecycle()
    config = uvicorn.Config(
        report_startup_errors(create_app(settings, lifecycle=lifecycle), lifecycle),
        host=host,
        port=port,
        http=with_header_timeout(settings.headers_timeout_seconds),
        timeout_graceful_shutdown=GRACEFUL_SECONDS,
        lifespan="on",
        log_config=None,
        **protocol_options(settings),
    )
    filters = (QuietStartupFailure(lifecycle), InvalidUtf8AsInfo())
    uvicorn_errors = logging.getLogger("uvicorn.error")
    for each in filters:
        uvicorn_errors.addFilter(each)
    try:
        Server(config, lifecycle).run(sockets=sockets)
    finally:
        for each in filters:
            uvicorn_errors.removeFilter(each)


def run_server(settings: Settings, *, host: str, port: int, reload: bool) -> None:
    """Serve until a signal: one process, `settings.workers` processes, or uvicorn's reloader."""
    raise_open_files_limit()
    if reload:
        uvicorn.run(
            "backend.interface.server.app:create_app",
            factory=True,
            host=host,
            port=port,
            reload=True,
            reload_dirs=["backend"],
            http=HttpProtocol,  # reloaded workers get a copy: no per-run class
            **protocol_options(settings),
        )
        return
    if settings.workers > 1:
        from backend.interface.server.workers import supervise

        status = supervise(settings, host=host, port=port, count=settings.workers)
        if status:
            raise SystemExit(status)
        return
    serve(settings, host=host, port=port)
