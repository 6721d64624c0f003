"""Throw-away databases cloned on the same server (migration checks, test isolation)."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import anyio

from backend.connectors.database import connect


def with_database(url: str, name: str) -> str:
    """The same server URL pointing at another database."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def quote_ident(name: str) -> str:
    """A SQL identifier, quoted as PostgreSQL's quote_ident does (DDL takes no parameters)."""
    return '"' + name.replace('"', '""') + '"'


async def create_database(url: str, name: str, template: str | None = None) -> str:
    conn = await connect(url)
    try:
        clause = f" TEMPLATE {quote_ident(template)} STRATEGY FILE_COPY" if template else ""
        await conn.execute(f"CREATE DATABASE {quote_ident(name)}{clause}")
    finally:
        await conn.close()
    return with_database(url, name)


async def drop_database(url: str, name: str) -> None:
    conn = await connect(url)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)")
    finally:
        await conn.close()


@contextlib.contextmanager
def scratch_database(url: str) -> Iterator[str]:
    """A fresh empty database for the block, dropped afterwards."""
    name = f"pgcast_scratch_{secrets.token_hex(4)}"
    scratch_url = anyio.run(create_database, url, name)
    try:
        yield scratch_url
    finally:
        anyio.run(drop_database, url, name)
