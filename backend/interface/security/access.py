"""The one place routes and WebSocket ops ask for permission.

Every HTTP route calls `require(request, permission, *names)` after validating its names
and before reading a body; publishing routes then call `throttle`. The WebSocket handler
resolves its principal once with `principal_of` and checks each op against it.
Credentials come from `Authorization: Bearer`, else the `token` query parameter, else the
`pgcast_token` cookie (set by `POST /auth/cookie`).
"""

from __future__ import annotations

from starlette.requests import HTTPConnection

from backend.core.errors import RateLimited, Unauthorized
from backend.interface.security.auth import ANYONE, Permission, Principal
from backend.interface.security.limits import RateLimiter, retry_after_seconds
from backend.interface.server.state import AppState

TOKEN_COOKIE = "pgcast_token"  # noqa: S105 - a cookie name, not a secret
TOKEN_PARAM = "token"  # noqa: S105 - a parameter name, not a secret


def bearer_of(connection: HTTPConnection) -> str | None:
    """The token of an `Authorization: Bearer` header; any other scheme is a 401."""
    header = connection.headers.get("authorization")
    if header is None:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise Unauthorized("the Authorization header must be 'Bearer <token>'")
    return value.strip()


def token_of(connection: HTTPConnection) -> str | None:
    """The credential of a request: the Authorization header, `?token=` or the cookie."""
    bearer = bearer_of(connection)
    if bearer is not None:
        return bearer
    return connection.query_params.get(TOKEN_PARAM) or connection.cookies.get(TOKEN_COOKIE)


def principal_of(connection: HTTPConnection) -> Principal | None:
    """The caller's principal; None when auth is on and no credential was sent at all."""
    guard = AppState.of(connection).guard
    if not guard.enabled:
        return ANYONE
    token = token_of(connection)
    return None if token is None else guard.verify(token)


def authenticate(connection: HTTPConnection) -> Principal:
    principal = principal_of(connection)
    if principal is None:
        raise Unauthorized("a token is required", token_given=False)
    return principal


def require(connection: HTTPConnection, permission: Permission, *names: str) -> Principal:
    """Authenticate (401) and authorize (403) one request; returns who is asking."""
    principal = authenticate(connection)
    principal.check(permission, *names)
    return principal


def rate_key(principal: Principal, connection: HTTPConnection) -> str:
    """Publishes are counted per token subject, or per client address while auth is off."""
    if principal.subject is not None:
        return f"sub:{principal.subject}"
    client = connection.client
    return f"ip:{client.host if client else 'unknown'}"


def spend(limiter: RateLimiter | None, key: str) -> None:
    """Take one publish from `key`'s bucket; RateLimited (429) when it is empty."""
    if limiter is None:
        return
    wait = limiter.take(key)
    if wait > 0:
        seconds = retry_after_seconds(wait)
        raise RateLimited(
            f"too many publishes: the limit is {limiter.rate:g} per second;"
            f" retry after {seconds} s",
            retry_after=seconds,
        )


def throttle(connection: HTTPConnection, principal: Principal) -> None:
    """Count one publish request against the caller's rate limit."""
    spend(AppState.of(connection).guard.limiter, rate_key(principal, connection))
