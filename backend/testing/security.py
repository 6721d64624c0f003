"""Tokens and an auth-enabled server for the security tests."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import anyio
import jwt

from backend.testing import postgres
from backend.testing.server import ServerProcess, start_server

SECRET = "test-secret-with-at-least-32-characters"
WRONG_SECRET = "another-secret-with-32-characters-or-more"


def token(
    sub: str = "alice",
    *,
    ttl: float = 600,
    secret: str = SECRET,
    **grants: Any,
) -> str:
    """An HS256 token with `pgcast` grants (publish=[...], subscribe=[...], admin=True...)."""
    now = time.time()
    claims = {"sub": sub, "iat": int(now), "exp": int(now + ttl), "pgcast": grants}
    return jwt.encode(claims, secret, algorithm="HS256")


def sign_claims(claims: dict[str, Any], secret: str = SECRET) -> str:
    """An HS256 token of exactly these claims (for expiries `token` cannot express)."""
    return jwt.encode(claims, secret, algorithm="HS256")


def bearer(value: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"} if value else {}


@contextlib.contextmanager
def auth_server(**env: str) -> Iterator[ServerProcess]:
    """A server with AUTH_SECRET on a database of its own."""
    url = anyio.run(postgres.clone_template)
    try:
        with start_server(url, extra_env={"AUTH_SECRET": SECRET, **env}) as server:
            yield server
    finally:
        anyio.run(postgres.drop, url)
