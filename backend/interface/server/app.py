"""The Starlette application factory.

`create_app()` is what `pgcast serve` runs and what another Starlette or FastAPI
application mounts: `app.mount("/pgcast", create_app(database_url=...))`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route, WebSocketRoute

from backend.core.compaction import runtime_tables
from backend.core.errors import ConfigError, PgcastError
from backend.core.settings import Settings, get_settings
from backend.interface.http import auth as http_auth
from backend.interface.http import capture as http_capture
from backend.interface.http import events as http_events
from backend.interface.http import health
from backend.interface.http import queues as http_queues
from backend.interface.http import topics as http_topics
from backend.interface.http.cors import JsonCorsMiddleware
from backend.interface.http.errors import EXCEPTION_HANDLERS
from backend.interface.security.guard import Guard, split_list
from backend.interface.security.protection import LoopbackHostOnly, install_log_redaction
from backend.interface.server import browser
from backend.interface.server.lifecycle import Lifecycle
from backend.interface.server.metrics import Metrics
from backend.interface.server.state import AppState
from backend.interface.stream.handoff import StreamHandoff
from backend.interface.stream.sse_sweep import SseSweep
from backend.interface.stream.ws.endpoint import websocket_endpoint
from backend.interface.stream.ws.sweep import WsSweep
from backend.interface.stream.ws.tasks import SocketTasks
from backend.services.engine import Engine

# Request headers a cross-origin page may send, and response headers it may read.
CORS_REQUEST_HEADERS = ["Authorization", "Content-Type", "Last-Event-ID", "Idempotency-Key"]
CORS_RESPONSE_HEADERS = ["Idempotent-Replayed", "Retry-After", "WWW-Authenticate"]


def _middleware(settings: Settings, guard: Guard) -> list[Middleware]:
    """Stream handoff outermost, loopback-only `Host` while auth is off (unless INSECURE),
    then CORS when configured."""
    stack = [Middleware(StreamHandoff)]
    if not guard.enabled and not settings.insecure:
        stack.append(Middleware(LoopbackHostOnly))
    origins = split_list(settings.cors_origins)
    if origins:
        stack.append(
            Middleware(
                JsonCorsMiddleware,
                allow_origins=origins,
                allow_methods=["GET", "POST", "PUT", "DELETE"],
                allow_headers=CORS_REQUEST_HEADERS,
                expose_headers=CORS_RESPONSE_HEADERS,
                # Cookies only for named origins: with `*` any site could send them.
                allow_credentials="*" not in origins,
                max_age=600,
            )
        )
    return stack


def create_app(
    settings: Settings | None = None,
    *,
    database_url: str | None = None,
    lifecycle: Lifecycle | None = None,
) -> Starlette:
    """Build the app; the engine starts and stops with the app's lifespan."""
    settings = settings or get_settings()
    url = database_url or settings.database_url or os.environ.get("DATABASE_URL")
    if not url:
        raise ConfigError("DATABASE_URL: required when pgcast is mounted into another app")
    lifecycle = lifecycle or Lifecycle()
    metrics = Metrics()
    guard = Guard.create(settings)
    install_log_redaction()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            try:
                engine = await stack.enter_async_context(Engine.open(url, settings))
            except PgcastError as exc:
                lifecycle.startup_error = exc
                raise
            tasks = await stack.enter_async_context(anyio.create_task_group())
            metrics.attach(engine)
            tasks.start_soon(metrics.refresh_shared)
            # The runner hands over its server's tables through the lifecycle.
            crowd_tables = (engine.hub.tables, lambda: lifecycle.server_tables(), runtime_tables)
            sse = SseSweep(
                settings.heartbeat_seconds,
                settings.send_timeout,
                lifecycle.shutting_down,
                crowd_tables,
            )
            tasks.start_soon(sse.run)
            socket_tasks = SocketTasks(await stack.enter_async_context(anyio.create_task_group()))
            ws = WsSweep(
                settings.send_timeout,
                lifecycle.shutting_down,
                socket_tasks,
                settings.ws_ping_interval_seconds,
                crowd_tables,
            )
            tasks.start_soon(ws.run)
            app.state.pgcast = AppState(engine, settings, lifecycle, metrics, guard, sse, ws)
            try:
                yield
            finally:
                socket_tasks.close()
            tasks.cancel_scope.cancel()

    # Starlette tries the routes in order, one regular expression each: the busiest
    # requests (a publish, a worker's ack or nack) come first.
    routes = [
        Route("/topics/{topic}/events", http_events.PublishRoute(), methods=["POST"]),
        Route("/queues/{queue}/messages/{id}/ack", http_queues.ack, methods=["POST"]),
        Route("/queues/{queue}/messages/{id}/nack", http_queues.nack, methods=["POST"]),
        Route("/healthz", health.healthz),
        Route("/readyz", health.readyz),
        Route("/metrics", health.metrics),
        Route("/auth/cookie", http_auth.set_cookie, methods=["POST"]),
        Route("/auth/cookie", http_auth.delete_cookie, methods=["DELETE"]),
        Route("/topics", http_topics.topics, methods=["GET"]),
        Route("/topics/{topic}/events", http_events.topic_events, methods=["GET"]),
        Route("/events", http_events.events, methods=["GET"]),
        Route("/queues", http_queues.all_queues, methods=["GET"]),
        Route("/queues/{queue}", http_queues.queue_stats, methods=["GET"]),
        Route("/queues/{queue}/messages", http_queues.enqueue, methods=["POST"]),
        Route("/queues/{queue}/messages", http_queues.consume_messages, methods=["GET"]),
        Route("/queues/{queue}/messages/{id}/extend", http_queues.extend, methods=["POST"]),
        Route("/queues/{queue}/dead", http_queues.dead_letters, methods=["GET"]),
        Route("/queues/{queue}/dead/requeue", http_queues.requeue_all, methods=["POST"]),
        Route("/queues/{queue}/dead/{id}/requeue", http_queues.requeue_one, methods=["POST"]),
        Route("/admin/captures", http_capture.captures, methods=["GET"]),
        Route("/admin/captures/{table}", http_capture.put_capture, methods=["PUT"]),
        Route("/admin/captures/{table}", http_capture.delete_capture, methods=["DELETE"]),
        WebSocketRoute("/ws", websocket_endpoint),
        Route("/", browser.index, methods=["GET"]),
        browser.static_mount(),
    ]
    return Starlette(
        routes=routes,
        middleware=_middleware(settings, guard),
        lifespan=lifespan,
        exception_handlers=EXCEPTION_HANDLERS,
    )
