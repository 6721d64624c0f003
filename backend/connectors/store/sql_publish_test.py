"""`pgcast.publish` called from SQL: what it accepts, what it refuses and how, and what it
leaves behind (a pending row, a receipt, one wake-up at commit)."""

from __future__ import annotations

from datetime import timedelta

import anyio
import asyncpg
import pytest

from backend.connectors.database import connect

pytestmark = [pytest.mark.integrated, pytest.mark.anyio]

INVALID = "22023"
TOO_BIG = "54000"

REFUSALS = [
    pytest.param(None, "1", None, INVALID, "invalid topic NULL", id="topic NULL"),
    pytest.param("", "1", None, INVALID, "invalid topic ''", id="topic empty"),
    pytest.param("bad topic", "1", None, INVALID, "invalid topic 'bad topic'", id="topic space"),
    pytest.param("a..b", "1", None, INVALID, "invalid topic", id="topic empty segment"),
    pytest.param("t" * 201, "1", None, INVALID, "invalid topic", id="topic 201 characters"),
    pytest.param("pgcast", "1", None, INVALID, "reserved for the server", id="topic pgcast"),
    pytest.param("pgcast.x", "1", None, INVALID, "reserved for the server", id="topic pgcast.x"),
    pytest.param("t", "1", "error", INVALID, "event type 'error' is reserved", id="type error"),
    pytest.param("t", "1", "pgcast.x", INVALID, "'pgcast.x' is reserved", id="type pgcast.x"),
    pytest.param("t", "1", "", INVALID, "1-200 characters", id="type empty"),
    pytest.param("t", "1", "a\nb", INVALID, "without control characters", id="type newline"),
    pytest.param("t", "1", "y" * 201, INVALID, "1-200 characters", id="type 201 characters"),
    pytest.param("t", None, None, INVALID, "must not be NULL", id="data NULL"),
    pytest.param(
        "t",
        '"' + "x" * 99 + '"',
        None,
        TOO_BIG,
        "is 101 bytes, over the limit of 100 bytes",
        id="data over the limit",
    ),
]


@pytest.mark.parametrize(("topic", "data", "type_", "sqlstate", "message"), REFUSALS)
async def test_a_refused_publish_names_the_problem_and_writes_nothing(
    database_url: str,
    topic: str | None,
    data: str | None,
    type_: str | None,
    sqlstate: str,
    message: str,
) -> None:
    conn = await connect(database_url)
    try:
        await conn.execute("UPDATE pgcast.log_state SET max_event_bytes = 100 WHERE id = 1")
        with pytest.raises(asyncpg.PostgresError) as refused:
            await conn.fetchval(
                "SELECT pgcast.publish($1, $2::text::jsonb, $3)", topic, data, type_
            )
        assert refused.value.sqlstate == sqlstate
        assert message in str(refused.value)
        assert await conn.fetchval("SELECT count(*) FROM pgcast.events") == 0
    finally:
        await conn.close()


async def test_data_at_the_limit_is_accepted(database_url: str) -> None:
    conn = await connect(database_url)
    try:
        await conn.execute("UPDATE pgcast.log_state SET max_event_bytes = 100 WHERE id = 1")
        receipt = await conn.fetchval(
            "SELECT pgcast.publish('t', $1::text::jsonb)", '"' + "x" * 98 + '"'
        )
        assert await conn.fetchval("SELECT octet_length(data::text) FROM pgcast.events") == 100
        assert receipt == "r" + str(await conn.fetchval("SELECT seq FROM pgcast.events"))
    finally:
        await conn.close()


async def test_a_publish_leaves_a_pending_row_a_receipt_and_one_wake_up_at_commit(
    database_url: str,
) -> None:
    listener = await connect(database_url)
    conn = await connect(database_url)
    woken = anyio.Event()
    wake_ups: list[str] = []

    def on_pending(_conn: object, _pid: int, channel: str, payload: object) -> None:
        wake_ups.append(f"{channel}:{payload}")
        woken.set()

    try:
        await listener.add_listener("pgcast_pending", on_pending)
        async with conn.transaction():
            first = await conn.fetchval(
                "SELECT pgcast.publish('orders.created', '{\"n\": 1}'::jsonb, 'created', 'k1')"
            )
            second = await conn.fetchval("SELECT pgcast.publish('orders', 'null'::jsonb)")
            await anyio.sleep(0.1)
            assert not woken.is_set()  # nothing is said before the commit
        with anyio.fail_after(5):
            await woken.wait()
        await anyio.sleep(0.1)
        assert wake_ups == ["pgcast_pending:"]  # the transaction's two wake-ups folded into one
        rows = await conn.fetch(
            "SELECT 'r' || seq AS receipt, pos, topic, type, key, data::text AS data"
            " FROM pgcast.events ORDER BY seq"
        )
        assert [dict(row) for row in rows] == [
            {
                "receipt": first,
                "pos": None,
                "topic": "orders.created",
                "type": "created",
                "key": "k1",
                "data": '{"n": 1}',
            },
            {
                "receipt": second,
                "pos": None,
                "topic": "orders",
                "type": None,
                "key": None,
                "data": "null",
            },
        ]
    finally:
        await conn.close()
        await listener.close()


async def test_no_wake_up_while_a_sequencer_lease_is_current_and_one_after_it(
    database_url: str,
) -> None:
    """A busy sequencer polls of its own accord and says so in `pgcast.sequencer_lease`:
    publishes then commit without the notification (and its database-wide lock)."""
    listener = await connect(database_url)
    conn = await connect(database_url)
    wake_ups: list[str] = []
    try:
        await listener.add_listener("pgcast_pending", lambda *_: wake_ups.append("pending"))
        lease_sql = "UPDATE pgcast.sequencer_lease SET busy_until = clock_timestamp() + $1"
        await conn.execute(lease_sql, timedelta(hours=1))
        await conn.fetchval("SELECT pgcast.publish('leased', '1')")
        await anyio.sleep(0.2)
        assert wake_ups == []
        await conn.execute(lease_sql, timedelta(seconds=-1))
        await conn.fetchval("SELECT pgcast.publish('leased', '2')")
        with anyio.fail_after(5):
            while not wake_ups:
                await anyio.sleep(0.01)
        assert wake_ups == ["pending"]
        assert await conn.fetchval("SELECT count(*) FROM pgcast.events WHERE pos IS NULL") == 2
    finally:
        await listener.close()
        await conn.close()


async def test_a_sequencer_run_sets_the_lease_only_when_it_stamps_and_asks_for_one(
    database_url: str,
) -> None:
    conn = await connect(database_url)
    lease_sql = "SELECT busy_until - clock_timestamp() FROM pgcast.sequencer_lease"
    try:
        await conn.fetch("SELECT * FROM pgcast.sequence_returning(10, 1000000, 60)")
        assert await conn.fetchval(lease_sql) is None  # nothing to stamp: no lease
        await conn.fetchval("SELECT pgcast.publish('leased', '1')")
        await conn.fetch("SELECT * FROM pgcast.sequence_returning(10, 1000000, 60)")
        left = await conn.fetchval(lease_sql)
        assert 55 < left.total_seconds() <= 60
        await conn.fetchval("SELECT pgcast.publish('leased', '2')")
        await conn.fetch("SELECT * FROM pgcast.sequence_returning(10, 1000000, 5)")
        left = await conn.fetchval(lease_sql)  # the latest run's lease: its process polls
        assert 0 < left.total_seconds() <= 5
        await conn.fetchval("SELECT pgcast.publish('leased', '3')")
        await conn.fetch("SELECT * FROM pgcast.sequence_returning(10, 1000000)")
        assert 0 < (await conn.fetchval(lease_sql)).total_seconds() <= 5  # none asked: kept
        positions = await conn.fetch("SELECT pos FROM pgcast.events ORDER BY seq")
        assert [r["pos"] for r in positions] == [1, 2, 3]
    finally:
        await conn.close()
