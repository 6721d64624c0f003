"""`pgcast token create`: sign an access token with AUTH_SECRET (docs/security.md)."""

from __future__ import annotations

import os
import time
from typing import Annotated

import typer

from backend.core.errors import Unauthorized
from backend.interface.cli.client import command_group, fail, write_line

token_app = command_group("token", "Access tokens signed with AUTH_SECRET.")

Patterns = Annotated[
    list[str] | None,
    typer.Option(help="Pattern to allow (repeat the option for more); {sub} is the subject."),
]


@token_app.command()
def create(
    sub: Annotated[str, typer.Option("--sub", help="Subject: who the token is for.")],
    publish: Patterns = None,
    subscribe: Patterns = None,
    consume: Patterns = None,
    admin: Annotated[
        bool, typer.Option("--admin", help="Allow admin routes, all queue stats and metrics.")
    ] = False,
    ttl: Annotated[str, typer.Option("--ttl", help="Lifetime: 90, 45s, 30m, 1h or 7d.")] = "1h",
) -> None:
    """Print a signed token (HS256 with AUTH_SECRET from the environment).

    Example: pgcast token create --sub alice --subscribe 'orders.>' --publish 'orders.*' --ttl 1h
    """
    # Signing (PyJWT, cryptography) and the settings load for this command only.
    from backend.core.settings import MIN_SECRET_LENGTH
    from backend.interface.security.auth import create_token, parse_ttl

    secret = os.environ.get("AUTH_SECRET", "")
    if not secret:
        fail("AUTH_SECRET is not set: tokens are signed with it (the server's AUTH_SECRET)")
    if len(secret) < MIN_SECRET_LENGTH:
        fail(f"AUTH_SECRET must be at least {MIN_SECRET_LENGTH} characters")
    try:
        seconds = parse_ttl(ttl)
    except ValueError as exc:
        fail(f"--ttl: {exc}")
    try:
        token = create_token(
            secret,
            sub,
            publish=publish or [],
            subscribe=subscribe or [],
            consume=consume or [],
            admin=admin,
            ttl_seconds=seconds,
            now=time.time(),
        )
    except Unauthorized as exc:
        fail(f"cannot create this token: {exc.message}")
    write_line(token)
