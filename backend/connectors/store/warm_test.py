"""Warming a connection prepares the hot statements and changes nothing."""

from __future__ import annotations

import pytest

from backend.connectors.database import connect
from backend.connectors.store import queues
from backend.connectors.store.warm import warm
from backend.entities.message import NewMessage

pytestmark = [pytest.mark.integrated, pytest.mark.anyio]

ROWS = """
    SELECT 'message', id, state, attempt, lease_token FROM pgcast.queue_messages
    UNION ALL SELECT 'event', pos, topic, 0, type FROM pgcast.events
    ORDER BY 1, 2
"""


async def test_warm_prepares_the_hot_statements_and_changes_nothing(database_url: str) -> None:
    writer = await connect(database_url)
    conn = await connect(database_url)
    try:
        stored = await queues.insert_messages(
            writer, [NewMessage("jobs", b'{"n": %d}' % n) for n in range(3)]
        )
        (leased,) = await queues.claim(writer, "jobs", 30.0, "lease.", 1)
        before = await writer.fetch(ROWS)

        await warm(conn)

        prepared = await conn.fetch("SELECT statement FROM pg_prepared_statements")
        texts = " ".join(row["statement"] for row in prepared)
        for fragment in (
            "INSERT INTO pgcast.queue_messages",
            "FOR UPDATE SKIP LOCKED",
            "SET state = 'acked'",
            "WHERE pos > $1 AND pos <= $4",
        ):
            assert fragment in texts, fragment
        assert await writer.fetch(ROWS) == before
        assert [m.id for m in await queues.claim(writer, "jobs", 30.0, "next.", 5)] == [
            m.id for m in stored if m.id != leased.id
        ]
    finally:
        await conn.close()
        await writer.close()
