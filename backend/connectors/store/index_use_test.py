"""No statement on a hot path scans the whole log: their cost must not grow with it.

Each statement runs more than five times, so the functions' kept plans and the server's
prepared statements reach the generic plans PostgreSQL switches to. The log has never been
analyzed, as after a fresh install or a bulk load.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from backend.connectors.database import Connection, connect
from backend.connectors.store import log
from backend.connectors.store.log import TopicSelector
from backend.core.names import Pattern
from backend.entities.event import NewEvent

pytestmark = [pytest.mark.integrated, pytest.mark.anyio]

LOG_SIZE = 20_000
RUNS = 8
LONG_AGO = datetime(2000, 1, 1, tzinfo=UTC)

PUBLISH = "SELECT pgcast.publish('orders', $1::jsonb)"
SCANS = """
    SELECT coalesce(seq_scan, 0) FROM pg_stat_xact_user_tables
     WHERE relid = 'pgcast.events'::regclass
"""


async def _fill(conn: Connection) -> None:
    await log.append_positioned(
        conn, [NewEvent("filler", b'{"n": %d}' % n) for n in range(LOG_SIZE)]
    )


async def _stamp_three_ways(conn: Connection, n: int) -> None:
    """One event each through both sequencer functions and the idempotent publish's."""
    await conn.execute(PUBLISH, f'{{"n": {n}}}')
    assert (await log.sequence_returning(conn, 1000, 256 * 1024, 0.5)).positions == 1
    await conn.execute(PUBLISH, f'{{"n": {n}}}')
    assert await log.sequence_pending(conn) == 1
    seqs = await log.insert_events(conn, [NewEvent("orders", b'{"n": %d}' % n)])
    assert len(await log.sequence_and_read(conn, seqs)) == 1


async def test_sequencers_publish_reads_listings_and_pruning_use_indexes(
    database_url: str,
) -> None:
    conn = await connect(database_url)
    try:
        await _fill(conn)
        selectors = [TopicSelector.of((Pattern.parse(p),)) for p in ("orders", "*")]
        async with conn.transaction():
            for n in range(RUNS):
                await _stamp_three_ways(conn, n)
                head = LOG_SIZE + 3 * (n + 1)
                newest = [head - 2, head - 1, head]
                assert [e.pos for e in await log.read_all_after(conn, head - 3, 100)] == newest
                for selector in selectors:
                    page = await log.read_page(conn, selector, head - 3, head, 100)
                    assert [e.pos for e in page.events] == newest
                    listed = await log.topic_summaries(conn, selector, "g", 10)  # after "filler"
                    assert [(t.topic, t.newest_pos) for t in listed] == [("orders", head)]
                assert await log.prune_before(conn, LONG_AGO, 1000) == log.Pruned(0, 0)
            assert await conn.fetchval(SCANS) == 0
    finally:
        await conn.close()
