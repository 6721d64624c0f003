"""Keeping a token in an HttpOnly cookie, for browsers (EventSource cannot send headers).

POST   /auth/cookie   token in `Authorization: Bearer` or body {"token": ...}; verified first
DELETE /auth/cookie   clears it

The cookie is HttpOnly (page scripts cannot read it), SameSite=Strict (other sites'
requests do not carry it), Secure on https, and lives exactly as long as the token.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from backend.core.errors import NotFound, Unauthorized
from backend.entities.event import format_time
from backend.interface.http.errors import RequestError
from backend.interface.http.inputs import SMALL_BODY_BYTES, has_body, read_json
from backend.interface.security.access import TOKEN_COOKIE, bearer_of
from backend.interface.server.state import AppState


async def _token(request: Request) -> str:
    """From the Authorization header, else from the JSON body; neither: 401."""
    bearer = bearer_of(request)
    if bearer is not None:
        return bearer
    if not has_body(request):
        raise Unauthorized("a token is required", token_given=False)
    body = await read_json(request, SMALL_BODY_BYTES)
    if not isinstance(body, dict) or not isinstance(body.get("token"), str):
        raise RequestError(400, "invalid_request", 'the body must be {"token": "<token>"}')
    token: str = body["token"]
    return token


async def set_cookie(request: Request) -> Response:
    """POST /auth/cookie: verify the token, then store it in the `pgcast_token` cookie."""
    guard = AppState.of(request).guard
    if guard.verifier is None:
        raise NotFound("authentication is off on this server: there is no token to store")
    token = await _token(request)
    principal = guard.verifier.verify(token)
    expires_at = principal.expires_at or time.time()
    response = JSONResponse(
        {
            "sub": principal.subject,
            "expires": format_time(datetime.fromtimestamp(expires_at, UTC)),
        }
    )
    response.set_cookie(
        TOKEN_COOKIE,
        token,
        max_age=max(0, int(expires_at - time.time())),
        path="/",
        secure=request.url.scheme == "https",
        httponly=True,
        samesite="strict",
    )
    return response


async def delete_cookie(request: Request) -> Response:
    """DELETE /auth/cookie: forget the cookie (always 204)."""
    response = Response(status_code=204)
    response.delete_cookie(
        TOKEN_COOKIE,
        path="/",
        secure=request.url.scheme == "https",
        httponly=True,
        samesite="strict",
    )
    return response
