"""No statement on a hot path scans the whole log: their cost must not grow with it.

Each test runs twice: with PostgreSQL choosing between custom and generic plans as it
does for the functions' kept plans and the server's prepared statements (each statement
runs more than five times), and with generic plans forced. The log has never been
analyzed (autovacuum is off for it here), as after a fresh install or a bulk load.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from backend.connectors.database import Connection, connect
from backend.connectors.store import capture, log
from backend.connectors.store.log import TopicSelector
from backend.core.names import Pattern
from backend.entities.event import NewEvent

pytestmark = [
    pytest.mark.integrated,
    pytest.mark.anyio,
    pytest.mark.parametrize("plans", ["auto", "force_generic_plan"]),
]

LOG_SIZE = 20_000
RUNS = 8
LONG_AGO = datetime(2000, 1, 1, tzinfo=UTC)

PUBLISH = "SELECT pgcast.publish('orders', $1::jsonb)"
SCANS = """
    SELECT coalesce(seq_scan, 0) FROM pg_stat_xact_user_tables
     WHERE relid = 'pgcast.events'::regclass
"""


async def _fill(conn: Connection, plans: str) -> None:
    """The log filled, never analyzed, and the session's plan choice set."""
    await conn.execute("ALTER TABLE pgcast.events SET (autovacuum_enabled = false)")
    await conn.execute(f"SET plan_cache_mode = {plans}")
    await log.append_positioned(
        conn, [NewEvent("filler", b'{"n": %d}' % n) for n in range(LOG_SIZE)]
    )


async def _position_four_ways(conn: Connection, n: int) -> None:
    """One event each through both sequencer functions, the idempotent publish's and the
    server's own publish."""
    await conn.execute(PUBLISH, f'{{"n": {n}}}')
    assert (await log.sequence_returning(conn, 1000, 256 * 1024, 0.5)).positions == 1
    await conn.execute(PUBLISH, f'{{"n": {n}}}')
    assert await log.sequence_pending(conn) == 1
    seqs = await log.insert_events(conn, [NewEvent("orders", b'{"n": %d}' % n)])
    assert len(await log.sequence_and_read(conn, seqs)) == 1
    assert len(await log.append_positioned(conn, [NewEvent("orders", b"{}")])) == 1


async def test_sequencers_publish_reads_listings_and_pruning_use_indexes(
    database_url: str, plans: str
) -> None:
    conn = await connect(database_url)
    try:
        await _fill(conn, plans)
        selectors = [TopicSelector.of((Pattern.parse(p),)) for p in ("orders", "*")]
        async with conn.transaction():
            for n in range(RUNS):
                await _position_four_ways(conn, n)
                head = LOG_SIZE + 4 * (n + 1)
                newest = [head - 3, head - 2, head - 1, head]
                assert [e.pos for e in await log.read_all_after(conn, head - 4, 100)] == newest
                for selector in selectors:
                    page = await log.read_page(conn, selector, head - 4, head, 100)
                    assert [e.pos for e in page.events] == newest
                    listed = await log.topic_summaries(conn, selector, "g", 10)  # after "filler"
                    assert [(t.topic, t.newest_pos) for t in listed] == [("orders", head)]
                assert await log.prune_before(conn, LONG_AGO, 1000) == log.Pruned(0, 0)
            assert await conn.fetchval(SCANS) == 0
    finally:
        await conn.close()


async def test_reads_through_captured_chunks_use_indexes(database_url: str, plans: str) -> None:
    """A statement of 300 changes is one chunk row of 300 positions; the hub's and catch-up
    reads that start inside it find it by index too. (The view `pgcast.log` is not a hot
    path: it expands every chunk of the topics it is filtered by; docs/operations.md.)"""
    conn = await connect(database_url)
    try:
        await _fill(conn, plans)
        await conn.execute(
            "CREATE TABLE public.stock (id int PRIMARY KEY, n int);"
            " INSERT INTO public.stock SELECT g, 0 FROM generate_series(1, 300) g"
        )
        async with conn.transaction():
            await capture.install(conn, "public", "stock", "stock", None, ["id"])
        selectors = [TopicSelector.of((Pattern.parse(p),)) for p in ("stock", "*")]
        async with conn.transaction():
            for n in range(RUNS):
                await conn.execute("UPDATE public.stock SET n = n + 1")
                stamped = await log.sequence_returning(conn, 1000, 256 * 1024, 0.5)
                assert (stamped.positions, stamped.events) == (300, [])
                head = LOG_SIZE + 300 * (n + 1)
                inside = head - 100
                tail = list(range(inside + 1, head + 1))
                assert [e.pos for e in await log.read_all_after(conn, inside, 1000)] == tail
                for selector in selectors:
                    page = await log.read_page(conn, selector, inside, head, 1000)
                    assert [e.pos for e in page.events] == tail
            assert await conn.fetchval(SCANS) == 0
    finally:
        await conn.close()
