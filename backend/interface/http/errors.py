"""Every failure leaves as JSON `{"error": code, "message": ...}` with a fitting status.

Typed errors map to statuses here and nowhere else; WebSocket error frames reuse the
same codes.
"""

from __future__ import annotations

import logging

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from backend.connectors.outage import outage
from backend.core.errors import (
    CursorExpired,
    DatabaseUnavailable,
    PgcastError,
    RateLimited,
    TooManyConnections,
    Unauthorized,
)

logger = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = "1"
BUSY_RETRY_AFTER_SECONDS = "5"
# What "the database is unreachable" looks like from any layer: the connectors report a lost
# or refused connection as DatabaseUnavailable and nothing else as such.
DB_DOWN: tuple[type[BaseException], ...] = (DatabaseUnavailable,)


class RequestError(PgcastError):
    """A malformed HTTP request: its status travels with it (400, 406, 413, 415, ...)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


# Every code an HTTP error body can carry, and its status (None: whatever status the
# framework raised). The source of docs/protocol.md §6; errors_test.py compares the two.
HTTP_STATUS: dict[str, int | None] = {
    "invalid_json": 400,
    "invalid_topic": 400,
    "invalid_queue": 400,
    "too_many_patterns": 400,
    "invalid_filter": 400,
    "invalid_cursor": 400,
    "invalid_event": 400,
    "invalid_parameter": 400,
    "invalid_request": 400,
    "invalid_body": 400,
    "invalid_capture_target": 400,
    "client_disconnected": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "method_not_allowed": 405,
    "request_timeout": 408,
    "conflict": 409,
    "cursor_expired": 410,
    "body_too_large": 413,
    "too_many_events": 413,
    "event_too_large": 413,
    "unsupported_media_type": 415,
    "rate_limited": 429,
    "internal": 500,
    "database_unavailable": 503,
    "shutting_down": 503,
    "too_many_connections": 503,
    "http_error": None,
}


def status_of(exc: PgcastError) -> int:
    if isinstance(exc, RequestError):
        return exc.status
    return HTTP_STATUS.get(exc.code) or 400


def error_body(exc: PgcastError) -> dict[str, object]:
    body: dict[str, object] = {"error": exc.code, "message": exc.message}
    if isinstance(exc, CursorExpired):
        body.update(oldest=exc.oldest, reason=exc.reason)
    return body


def error_headers(exc: PgcastError) -> dict[str, str]:
    """`WWW-Authenticate` on 401 (RFC 6750), `Retry-After` on 429 and 503."""
    if isinstance(exc, Unauthorized):
        problem = ', error="invalid_token"' if exc.token_given else ""
        return {"WWW-Authenticate": f'Bearer realm="pgcast"{problem}'}
    if isinstance(exc, RateLimited):
        return {"Retry-After": str(exc.retry_after)}
    if isinstance(exc, TooManyConnections):
        return {"Retry-After": BUSY_RETRY_AFTER_SECONDS}
    if status_of(exc) == 503:
        return {"Retry-After": RETRY_AFTER_SECONDS}
    return {}


def error_response(exc: PgcastError) -> JSONResponse:
    return JSONResponse(error_body(exc), status_of(exc), headers=error_headers(exc))


async def on_pgcast_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, PgcastError)
    return error_response(exc)


async def on_unavailable(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, DatabaseUnavailable)
    outage.failed("request", exc)
    return error_response(exc)


async def on_http_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    codes = {404: "not_found", 405: "method_not_allowed"}
    return JSONResponse(
        {"error": codes.get(exc.status_code, "http_error"), "message": exc.detail},
        exc.status_code,
        headers=exc.headers,
    )


async def on_client_disconnect(_request: Request, _exc: Exception) -> Response:
    """The client left while sending its body: nothing was done and nobody reads the answer."""
    logger.debug("client disconnected while sending a request body")
    return JSONResponse({"error": "client_disconnected", "message": "incomplete request"}, 400)


async def on_unexpected(_request: Request, exc: Exception) -> Response:
    logger.error("unexpected error", exc_info=exc)
    return JSONResponse({"error": "internal", "message": "internal server error"}, 500)


EXCEPTION_HANDLERS = {
    PgcastError: on_pgcast_error,
    HTTPException: on_http_error,
    ClientDisconnect: on_client_disconnect,
    DatabaseUnavailable: on_unavailable,
    Exception: on_unexpected,
}
