"""Scenario 6: table change capture, changes/s for one bulk UPDATE.

Two identical tables of `capture_rows` rows; one is captured (`add_capture`). One
`UPDATE ... SET n = n + 1` over every row of each, in autocommit. For the captured table
the clock stops when every change event has a position in the log (the running server's
sequencer stamps them after the commit); for the plain table, at the commit. Rate =
rows / seconds.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg

from backend.connectors.database import open_pool
from backend.services.capture import add_capture
from bench.model import Row, ScenarioResult
from bench.scenarios.common import Context

KEY = "capture"
TITLE = "Table change capture, one bulk UPDATE (changes/s)"
METHOD = (
    "Two tables (id int primary key, n int, label text) with the same rows, vacuumed and "
    "analysed; one captured by pgcast's statement-level triggers. Time one "
    "`UPDATE t SET n = n + 1` (every row) on each. Captured: until no event is left without "
    "a position (polled every 10 ms), i.e. the change events are in the log and ready to "
    "deliver. Baseline: the same UPDATE on the uncaptured table, until its commit."
)
TOPIC = "db.bench.captured"
POLL_SECONDS = 0.01
PENDING_SQL = "SELECT EXISTS (SELECT 1 FROM pgcast.events WHERE pos IS NULL)"


async def _prepare(url: str, rows: int) -> None:
    conn = await asyncpg.connect(url, timeout=30)
    try:
        for table in ("captured", "plain"):
            await conn.execute(f"DROP TABLE IF EXISTS bench.{table}")
            await conn.execute(
                f"CREATE TABLE bench.{table} (id int PRIMARY KEY, n int NOT NULL,"
                " label text NOT NULL)"
            )
            await conn.execute(
                f"INSERT INTO bench.{table} SELECT i, 0, 'row-' || i"
                " FROM generate_series(1, $1::int) AS i",
                rows,
            )
            await conn.execute(f"VACUUM (ANALYZE) bench.{table}")
    finally:
        await conn.close()
    async with open_pool(url, size=1) as pool:
        await add_capture(pool, "bench.captured", TOPIC)


async def _update(url: str, table: str, wait_positioned: bool) -> dict[str, Any]:
    conn = await asyncpg.connect(url, timeout=30)
    try:
        started = time.perf_counter()
        status = await conn.execute(f"UPDATE bench.{table} SET n = n + 1", timeout=300)
        committed = time.perf_counter() - started
        polls = 0
        if wait_positioned:
            deadline = time.perf_counter() + 300
            while await conn.fetchval(PENDING_SQL) and time.perf_counter() < deadline:
                polls += 1
                await asyncio.sleep(POLL_SECONDS)
        done = time.perf_counter() - started
        events = (
            await conn.fetchval(
                "SELECT sum(coalesce(span, 1)) FROM pgcast.events WHERE topic = $1"
                " AND type = 'update' AND pos IS NOT NULL",
                TOPIC,
            )
            if wait_positioned
            else None
        )
    finally:
        await conn.close()
    return {
        "status": status,
        "commit_s": round(committed, 3),
        "seconds": round(done, 3),
        "positioned_events": events,
        "polls": polls,
    }


def run(ctx: Context) -> ScenarioResult:
    rows = ctx.sizes.capture_rows
    result = ScenarioResult(KEY, TITLE, METHOD)
    with ctx.stack.server() as server:
        meter = ctx.meter(server.process.pid)
        asyncio.run(_prepare(ctx.stack.url, rows))
        plain = asyncio.run(_update(ctx.stack.url, "plain", wait_positioned=False))
        meter.start()
        captured = asyncio.run(_update(ctx.stack.url, "captured", wait_positioned=True))
        cpu = meter.stop()
    ours = rows / captured["seconds"] if captured["seconds"] else None
    base = rows / plain["seconds"] if plain["seconds"] else None
    note = (
        f"UPDATE itself {captured['commit_s']:.2f} s, positioned after {captured['seconds']:.2f} s"
    )
    if captured["positioned_events"] != rows:
        note += f"; only {captured['positioned_events']} of {rows} events positioned"
    result.rows.append(
        Row(
            f"UPDATE of {rows:,} rows",
            "changes/s",
            round(ours, 1) if ours else None,
            round(base, 1) if base else None,
            "same UPDATE, uncaptured table",
            note=note,
        )
    )
    result.details = {"rows": rows, "captured": {**captured, **cpu}, "plain": plain}
    return result
