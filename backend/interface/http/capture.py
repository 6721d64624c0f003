"""Admin HTTP routes for table change capture (what `pgcast capture ...` calls).

GET    /admin/captures           {"captures": [{"table", "topic", "columns"}]}
PUT    /admin/captures/{table}   body {"topic"?: str, "columns"?: [str]} (optional)
DELETE /admin/captures/{table}   {"removed": bool}
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from backend.interface.http.errors import RequestError
from backend.interface.http.inputs import has_body, read_json
from backend.interface.security.access import require
from backend.interface.security.auth import Permission
from backend.interface.server.state import AppState
from backend.services.capture import add_capture, list_captures, remove_capture

OPTION_FIELDS = frozenset({"topic", "columns"})


async def _options(request: Request, max_bytes: int) -> dict[str, Any]:
    """The optional JSON body; no body at all means `{}`."""
    if not has_body(request):
        return {}
    body = await read_json(request, max_bytes)
    if not isinstance(body, dict):
        raise RequestError(
            400,
            "invalid_body",
            'the body must be a JSON object: {"topic"?: ..., "columns"?: [...]}',
        )
    unknown = sorted(set(body) - OPTION_FIELDS)
    if unknown:
        raise RequestError(
            400,
            "invalid_body",
            f"unknown field(s): {', '.join(unknown)} (allowed: columns, topic)",
        )
    return body


async def captures(request: Request) -> Response:
    """GET /admin/captures"""
    require(request, Permission.ADMIN)
    pool = AppState.of(request).engine.pool
    found = await list_captures(pool)
    return JSONResponse({"captures": [capture.as_json() for capture in found]})


async def put_capture(request: Request) -> Response:
    """PUT /admin/captures/{table}: capture the table (idempotent; updates topic/columns)."""
    require(request, Permission.ADMIN)
    state = AppState.of(request)
    options = await _options(request, state.settings.max_body_bytes)
    capture = await add_capture(
        state.engine.pool,
        request.path_params["table"],
        topic=options.get("topic"),
        columns=options.get("columns"),
    )
    return JSONResponse(capture.as_json())


async def delete_capture(request: Request) -> Response:
    """DELETE /admin/captures/{table}: stop capturing it (idempotent)."""
    require(request, Permission.ADMIN)
    pool = AppState.of(request).engine.pool
    removed = await remove_capture(pool, request.path_params["table"])
    return JSONResponse({"removed": removed})
