"""Operational routes: liveness and readiness (open to all), metrics (admin tokens only)."""

from __future__ import annotations

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from backend.interface.security.access import require
from backend.interface.security.auth import Permission
from backend.interface.server.state import AppState


async def healthz(request: Request) -> JSONResponse:
    """200 when the database answers within 1 s, else 503 with the reason."""
    engine = AppState.of(request).engine
    try:
        with anyio.fail_after(1):
            await engine.pool.ping()
    except TimeoutError:
        return JSONResponse(
            {"status": "unavailable", "reason": "the database did not answer within 1 s"}, 503
        )
    except Exception as exc:  # noqa: BLE001 - any failure means "not healthy"
        return JSONResponse({"status": "unavailable", "reason": f"database error: {exc}"}, 503)
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> JSONResponse:
    """503 while the LISTEN connection is down or its last probe failed: we cannot deliver."""
    state = AppState.of(request)
    listener = state.engine.listener
    if state.lifecycle.shutting_down.is_set():
        return JSONResponse({"status": "unavailable", "reason": "shutting down"}, 503)
    if not listener.healthy:
        reason = "the LISTEN connection is down" if not listener.connected else "probe failed"
        return JSONResponse({"status": "unavailable", "reason": reason}, 503)
    return JSONResponse({"status": "ready", "position": state.engine.hub.position})


async def metrics(request: Request) -> Response:
    """GET /metrics: Prometheus text; it names queues and counts traffic, so admin only."""
    require(request, Permission.ADMIN)
    return await AppState.of(request).metrics.endpoint(request)
