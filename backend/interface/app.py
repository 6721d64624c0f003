"""The Starlette application factory.

`create_app()` is what `pgcast serve` runs and what another Starlette or FastAPI application
mounts: `app.mount("/pgcast", create_app())`.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from backend.core.errors import ConfigError
from backend.core.settings import Settings, get_settings
from backend.interface.lifecycle import Lifecycle
from backend.services.engine import Engine


async def healthz(request: Request) -> JSONResponse:
    """200 when the database answers within 1 s, else 503 with the reason."""
    engine: Engine = request.app.state.engine
    try:
        with anyio.fail_after(1):
            async with engine.pool.acquire() as conn:
                await conn.fetchval("SELECT 1")
    except TimeoutError:
        return JSONResponse(
            {"status": "unavailable", "reason": "database did not answer within 1 s"}, 503
        )
    except Exception as exc:
        return JSONResponse({"status": "unavailable", "reason": f"database error: {exc}"}, 503)
    return JSONResponse({"status": "ok"})


def create_app(
    settings: Settings | None = None,
    *,
    database_url: str | None = None,
    lifecycle: Lifecycle | None = None,
) -> Starlette:
    """Build the app; the engine starts with the app's lifespan."""
    settings = settings or get_settings()
    url = database_url or settings.database_url or os.environ.get("DATABASE_URL")
    if not url:
        raise ConfigError("DATABASE_URL: required when pgcast is mounted into another app")
    lifecycle = lifecycle or Lifecycle()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with Engine.open(url, settings) as engine:
            app.state.engine = engine
            app.state.lifecycle = lifecycle
            yield

    return Starlette(routes=[Route("/healthz", healthz)], lifespan=lifespan)
