"""The background sequencer against a real database: a stream of SQL publishes shares runs,
and a wake-up after a quiet spell is served at once."""

from __future__ import annotations

import anyio
import pytest

from backend.connectors.database import Connection, connect, open_pool
from backend.services.sequencer import Sequencer

pytestmark = [pytest.mark.integrated, pytest.mark.anyio]


async def _until_positioned(conn: Connection) -> None:
    while await conn.fetchval("SELECT count(*) FROM pgcast.events WHERE pos IS NULL"):
        await anyio.sleep(0.01)


async def test_a_stream_of_sql_publishes_shares_sequencer_runs(database_url: str) -> None:
    conn = await connect(database_url)
    try:
        async with open_pool(database_url, size=2) as pool, anyio.create_task_group() as tg:
            sequencer = Sequencer(pool, lambda: None, min_interval=0.05)
            tg.start_soon(sequencer.run)
            started = anyio.current_time()
            for n in range(100):  # each commit sends its wake-up, as pgcast_pending does
                await conn.fetchval("SELECT pgcast.publish('sql.stream', $1::jsonb)", str(n))
                sequencer.wake()
            with anyio.fail_after(10):
                await _until_positioned(conn)
            elapsed = anyio.current_time() - started
            tg.cancel_scope.cancel()
        assert sequencer.runs <= elapsed / 0.05 + 2
        assert sequencer.runs < 100
        positions = await conn.fetch(
            "SELECT pos FROM pgcast.events WHERE topic = 'sql.stream' ORDER BY seq"
        )
        assert [r["pos"] for r in positions] == list(range(1, 101))
    finally:
        await conn.close()


async def test_a_wake_up_after_a_quiet_spell_runs_at_once(database_url: str) -> None:
    conn = await connect(database_url)
    try:
        async with open_pool(database_url, size=2) as pool, anyio.create_task_group() as tg:
            sequencer = Sequencer(pool, lambda: None, min_interval=1.0)
            tg.start_soon(sequencer.run)
            for _ in range(2):  # the first run ever, then one after a quiet spell
                await conn.fetchval("SELECT pgcast.publish('sql.lone', '1')")
                started = anyio.current_time()
                sequencer.wake()
                with anyio.fail_after(5):
                    await _until_positioned(conn)
                assert anyio.current_time() - started < 0.8  # not held for min_interval
                await anyio.sleep(1.2)
            tg.cancel_scope.cancel()
    finally:
        await conn.close()
