"""No statement on a hot path scans the whole log: their cost must not grow with it.

Each statement runs more than five times, so the functions' kept plans and the server's
prepared statements reach the generic plans PostgreSQL switches to. The log has never been
analyzed, as after a fresh install or a bulk load.
"""

from __future__ import annotations

import pytest

from backend.connectors.database import Connection, connect
from backend.connectors.store import log
from backend.connectors.store.log import TopicSelector
from backend.core.names import Pattern
from backend.entities.event import NewEvent

pytestmark = [pytest.mark.integrated, pytest.mark.anyio]

LOG_SIZE = 20_000
RUNS = 8

PUBLISH = "SELECT pgcast.publish('orders', $1::jsonb)"
SCANS = """
    SELECT coalesce(seq_scan, 0) FROM pg_stat_xact_user_tables
     WHERE relid = 'pgcast.events'::regclass
"""


async def _fill(conn: Connection) -> None:
    await log.append_positioned(
        conn, [NewEvent("filler", b'{"n": %d}' % n) for n in range(LOG_SIZE)]
    )


async def test_sequencer_publish_and_reads_use_indexes(database_url: str) -> None:
    conn = await connect(database_url)
    try:
        await _fill(conn)
        selectors = [TopicSelector.of((Pattern.parse(p),)) for p in ("orders", "*")]
        async with conn.transaction():
            for n in range(RUNS):
                await conn.execute(PUBLISH, f'{{"n": {n}}}')
                stamped = await log.sequence_returning(conn, 1000, 256 * 1024, 0.5)
                assert stamped.positions == 1
                await conn.execute(PUBLISH, f'{{"n": {n}}}')
                assert await log.sequence_pending(conn) == 1
                head = LOG_SIZE + 2 * (n + 1)
                assert [e.pos for e in await log.read_all_after(conn, head - 2, 100)] == [
                    head - 1,
                    head,
                ]
                for selector in selectors:
                    page = await log.read_page(conn, selector, head - 2, head, 100)
                    assert [e.pos for e in page.events] == [head - 1, head]
            assert await conn.fetchval(SCANS) == 0
    finally:
        await conn.close()
