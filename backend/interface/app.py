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
from backend.interface import health, http_events, ws
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
        WebSocketRoute("/ws", ws.websocket_endpoint),
    ]
    return Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers=EXCEPTION_HANDLERS,
    )
