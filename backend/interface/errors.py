"""Every failure leaves as JSON `{"error": code, "message": ...}` with a fitting status.

Typed errors map to statuses here and nowhere else; WebSocket error frames reuse the
same codes.
"""

from __future__ import annotations

import logging

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from backend.connectors.database import UNAVAILABLE_ERRORS
from backend.core.errors import (
    Conflict,
    CursorExpired,
    DatabaseUnavailable,
    EventTooLarge,
    NotFound,
    PgcastError,
)

logger = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = "1"
# What "the database is unreachable" looks like from any layer.
DB_DOWN: tuple[type[BaseException], ...] = (DatabaseUnavailable, *UNAVAILABLE_ERRORS)


class RequestError(PgcastError):
    """A malformed HTTP request: its status travels with it (400, 406, 413, 415, ...)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def status_of(exc: PgcastError) -> int:
    if isinstance(exc, RequestError):
        return exc.status
    if isinstance(exc, EventTooLarge):
        return 413
    if isinstance(exc, Conflict):
        return 409
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, CursorExpired):
        return 410
    if isinstance(exc, DatabaseUnavailable):
        return 503
    return 400


def error_body(exc: PgcastError) -> dict[str, object]:
    body: dict[str, object] = {"error": exc.code, "message": exc.message}
    if isinstance(exc, CursorExpired):
        body.update(oldest=exc.oldest, reason=exc.reason)
    return body


def error_response(exc: PgcastError) -> JSONResponse:
    status = status_of(exc)
    headers = {"Retry-After": RETRY_AFTER_SECONDS} if status == 503 else None
    return JSONResponse(error_body(exc), status, headers=headers)


async def on_pgcast_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, PgcastError)
    return error_response(exc)


async def on_unavailable(_request: Request, exc: Exception) -> Response:
    logger.warning("database unavailable: %s", exc, extra={"action": "db_unavailable"})
    return error_response(DatabaseUnavailable(f"the database is unavailable: {exc}"))


async def on_http_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    codes = {404: "not_found", 405: "method_not_allowed"}
    return JSONResponse(
        {"error": codes.get(exc.status_code, "http_error"), "message": exc.detail},
        exc.status_code,
        headers=exc.headers,
    )


async def on_unexpected(_request: Request, exc: Exception) -> Response:
    logger.error("unexpected error", exc_info=exc)
    return JSONResponse({"error": "internal", "message": "internal server error"}, 500)


EXCEPTION_HANDLERS = {
    PgcastError: on_pgcast_error,
    HTTPException: on_http_error,
    **dict.fromkeys(UNAVAILABLE_ERRORS, on_unavailable),
    Exception: on_unexpected,
}
