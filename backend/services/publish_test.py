"""The publish path against a real database: what it costs in statements, and that events
queued behind a long backlog still come back with their positions."""

from __future__ import annotations

from typing import Any

import pytest

from backend.connectors.database import connect, open_pool
from backend.connectors.store import log as log_queries
from backend.entities.event import NewEvent
from backend.services.publish import publish_events

pytestmark = [pytest.mark.integrated, pytest.mark.anyio]


async def test_a_publish_is_two_statements_insert_then_sequence_and_read(
    database_url: str,
) -> None:
    statements: list[str] = []

    def log(query: Any) -> None:  # asyncpg's LoggedQuery
        statements.append(query.query)

    async with open_pool(database_url, size=1, live_reserve=0) as pool:
        async with pool.acquire() as conn:
            conn.add_query_logger(log)
        await publish_events(pool, [NewEvent("warm.up", b"0")])  # statements get prepared
        statements.clear()
        published = await publish_events(
            pool, [NewEvent("orders", b'{"n": 1}'), NewEvent("orders", b'{"n": 2}', "created")]
        )
    # Nothing else: the connection goes back to the pool without asyncpg's reset query.
    insert, sequence_and_read = statements
    assert "INSERT INTO pgcast.events" in insert
    assert "pgcast.sequence_and_read" in sequence_and_read
    assert [(e.pos, e.type, e.data_json) for e in published] == [
        (2, None, b'{"n": 1}'),
        (3, "created", b'{"n": 2}'),
    ]


async def test_events_behind_more_than_one_batch_of_backlog_get_their_positions(
    database_url: str,
) -> None:
    conn = await connect(database_url)
    try:
        for n in range(5):  # committed by SQL publishers, not yet sequenced
            await conn.fetchval("SELECT pgcast.publish('backlog', $1::jsonb)", str(n))
        seqs = await log_queries.insert_events(
            conn, [NewEvent("mine", b'"a"'), NewEvent("mine", b'"b"')]
        )
        mine = await log_queries.sequence_and_read(conn, seqs, batch=2)
        assert [(e.pos, e.topic, e.data_json) for e in mine] == [
            (6, "mine", b'"a"'),
            (7, "mine", b'"b"'),
        ]
        assert await conn.fetchval("SELECT count(*) FROM pgcast.events WHERE pos IS NULL") == 0
        assert await conn.fetchval("SELECT last_pos FROM pgcast.log_state") == 7
    finally:
        await conn.close()
