"""The Starlette application factory.

`create_app()` is what `pgcast serve` runs and what another Starlette or FastAPI
application mounts: `app.mount("/pgcast", create_app(database_url=...))`.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.routing import Route, WebSocketRoute

from backend.core.errors import ConfigError
from backend.core.settings import Settings, get_settings
from backend.interface import browser, health, http_capture, http_events, http_queues, ws
from backend.interface.errors import EXCEPTION_HANDLERS
from backend.interface.lifecycle import Lifecycle
from backend.interface.metrics import Metrics
from backend.interface.state import AppState
from backend.services.engine import Engine


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

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with Engine.open(url, settings) as engine:
            metrics.attach(engine)
            app.state.pgcast = AppState(engine, settings, lifecycle, metrics)
            yield

    routes = [
        Route("/healthz", health.healthz),
        Route("/readyz", health.readyz),
        Route("/metrics", metrics.endpoint),
        Route("/topics/{topic}/events", http_events.publish_to_topic, methods=["POST"]),
        Route("/topics/{topic}/events", http_events.topic_events, methods=["GET"]),
        Route("/events", http_events.events, methods=["GET"]),
        Route("/queues", http_queues.all_queues, methods=["GET"]),
        Route("/queues/{queue}", http_queues.queue_stats, methods=["GET"]),
        Route("/queues/{queue}/messages", http_queues.enqueue, methods=["POST"]),
        Route("/queues/{queue}/messages", http_queues.consume_messages, methods=["GET"]),
        Route("/queues/{queue}/messages/{id}/ack", http_queues.ack, methods=["POST"]),
        Route("/queues/{queue}/messages/{id}/nack", http_queues.nack, methods=["POST"]),
        Route("/queues/{queue}/messages/{id}/extend", http_queues.extend, methods=["POST"]),
        Route("/queues/{queue}/dead", http_queues.dead_letters, methods=["GET"]),
        Route("/queues/{queue}/dead/requeue", http_queues.requeue_all, methods=["POST"]),
        Route("/queues/{queue}/dead/{id}/requeue", http_queues.requeue_one, methods=["POST"]),
        Route("/admin/captures", http_capture.captures, methods=["GET"]),
        Route("/admin/captures/{table}", http_capture.put_capture, methods=["PUT"]),
        Route("/admin/captures/{table}", http_capture.delete_capture, methods=["DELETE"]),
        WebSocketRoute("/ws", ws.websocket_endpoint),
        Route("/", browser.index, methods=["GET"]),
        browser.static_mount(),
    ]
    return Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers=EXCEPTION_HANDLERS,
    )
