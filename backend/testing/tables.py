"""Application tables for capture tests: a connection after their DDL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from backend.connectors.database import Connection, connect


@asynccontextmanager
async def database(url: str, *ddl: str) -> AsyncIterator[Connection]:
    """A connection to the test database after running `ddl`."""
    conn = await connect(url)
    try:
        for statement in ddl:
            await conn.execute(statement)
        yield conn
    finally:
        await conn.close()
