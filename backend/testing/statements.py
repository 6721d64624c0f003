"""The statements a one-connection pool sends, for tests that count round trips."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from backend.connectors.database import Pool, open_pool


@asynccontextmanager
async def logged_pool(database_url: str) -> AsyncIterator[tuple[Pool, list[str], str]]:
    """A pool of one connection, the list its statements are appended to, and the text of
    the pool's reset query (what a release without `stateless` sends)."""
    statements: list[str] = []

    def log(query: Any) -> None:  # asyncpg's LoggedQuery
        statements.append(query.query)

    async with open_pool(database_url, size=1, live_reserve=0) as pool:
        async with pool.acquire() as conn:
            conn.add_query_logger(log)
            reset = conn.get_reset_query()
        statements.clear()
        yield pool, statements, reset
