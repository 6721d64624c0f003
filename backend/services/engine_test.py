"""The streaming engine against a real Postgres: ordering, resume, wake-ups, slow readers."""

from __future__ import annotations

import time
from contextlib import aclosing

import anyio
import pytest

from backend.connectors.database import connect
from backend.core.errors import CursorExpired, InvalidCursor, InvalidName
from backend.services import publish, subscribe
from backend.services.engine import Engine
from backend.testing import postgres
from backend.testing.engine import nothing_within, running_engine, take

pytestmark = [pytest.mark.integrated, pytest.mark.anyio]


async def test_catch_up_then_live_in_order(database_url: str) -> None:
    async with running_engine(database_url) as engine:
        first = [await engine.publish("orders.created", {"n": i}) for i in range(3)]
        async with engine.subscribe("orders.>", after="earliest") as events:
            backlog = await take(events, 3)
            live = await engine.publish("orders.paid", {"n": 3}, type="paid", key="k1")
            (received,) = await take(events, 1)
    assert [e.id for e in backlog] == [e.id for e in first]
    assert [e.data for e in backlog] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert received.id == live.id
    assert (received.type, received.key, received.data) == ("paid", "k1", {"n": 3})
    assert sorted(e.id for e in [*first, live]) == [e.id for e in [*first, live]]


async def test_module_functions_use_the_current_engine(database_url: str) -> None:
    async with running_engine(database_url), subscribe(["a.*", "b"], after="latest") as events:
        await publish("a.x", 1)
        await publish("c", 2)
        await publish("b", 3)
        got = await take(events, 2)
    assert [(e.topic, e.data) for e in got] == [("a.x", 1), ("b", 3)]


async def test_resume_after_an_id_gets_exactly_the_rest(database_url: str) -> None:
    async with running_engine(database_url) as engine:
        published = [await engine.publish("t", i) for i in range(10)]
        async with engine.subscribe("t", after=published[4].id) as events:
            got = await take(events, 5)
            assert await nothing_within(events, 0.3)
    assert [e.data for e in got] == [5, 6, 7, 8, 9]


async def test_filter_applies_to_backlog_and_live(database_url: str) -> None:
    async with running_engine(database_url) as engine:
        await engine.publish("o", {"status": "new", "amount": 5})
        await engine.publish("o", {"status": "shipped", "amount": 50})
        async with engine.subscribe("o", "earliest", "data.status=eq.shipped") as events:
            (old,) = await take(events, 1)
            await engine.publish("o", {"status": "new", "amount": 7})
            await engine.publish("o", {"status": "shipped", "amount": 70})
            (new,) = await take(events, 1)
    assert (old.data["amount"], new.data["amount"]) == (50, 70)


async def test_out_of_order_commit_is_still_delivered(database_url: str) -> None:
    """A publishes first and commits last; B commits in between. Resuming after B still gets A."""
    async with running_engine(database_url) as engine:
        conn_a = await connect(database_url)
        conn_b = await connect(database_url)
        try:
            async with engine.subscribe("ooo", after="latest") as events:
                tx_a = conn_a.transaction()
                await tx_a.start()
                await conn_a.execute("SELECT pgcast.publish('ooo', '\"A\"'::jsonb)")
                async with conn_b.transaction():
                    await conn_b.execute("SELECT pgcast.publish('ooo', '\"B\"'::jsonb)")
                (b,) = await take(events, 1)
            assert b.data == "B"
            async with engine.subscribe("ooo", after=b.id) as resumed:
                await tx_a.commit()
                (a,) = await take(resumed, 1)
            assert a.data == "A"
            assert a.id > b.id
        finally:
            await conn_a.close()
            await conn_b.close()


async def test_long_unrelated_transactions_do_not_stall_delivery(database_url: str) -> None:
    """Open write transactions (same database and another one) hold back nothing."""
    other_db = await postgres.clone_template("other")
    same = await connect(database_url)
    other = await connect(other_db)
    try:
        async with running_engine(database_url) as engine:
            for conn in (same, other):
                await conn.execute("BEGIN")
                await conn.execute("CREATE TEMP TABLE hold (x int)")
                await conn.execute("SELECT pg_current_xact_id()")
            # A business transaction that published and then stays open stalls nothing either.
            await same.execute("SELECT pgcast.publish('stall', '\"uncommitted\"'::jsonb)")
            async with engine.subscribe("stall", after="latest") as events:
                for i in range(10):
                    conn = await connect(database_url)
                    try:
                        await conn.execute("SELECT pgcast.publish('stall', $1::jsonb)", i)
                    finally:
                        await conn.close()
                    started = time.monotonic()
                    (event,) = await take(events, 1, within=1)
                    assert event.data == i
                    assert time.monotonic() - started < 1
                await same.execute("ROLLBACK")
                assert await nothing_within(events, 0.5)
    finally:
        await same.close()
        await other.close()
        await postgres.drop(other_db)


async def test_rolled_back_sql_publish_is_never_delivered(database_url: str) -> None:
    async with running_engine(database_url) as engine:
        conn = await connect(database_url)
        try:
            async with engine.subscribe("tx", after="latest") as events:
                async with conn.transaction():
                    receipt = await conn.fetchval("SELECT pgcast.publish('tx', '1'::jsonb)")
                tx = conn.transaction()
                await tx.start()
                await conn.execute("SELECT pgcast.publish('tx', '2'::jsonb)")
                await tx.rollback()
                (event,) = await take(events, 1)
                assert event.data == 1
                assert await nothing_within(events, 0.5)
            assert await conn.fetchval("SELECT pgcast.receipt_event_id($1)", receipt) == event.id
        finally:
            await conn.close()


async def test_sql_publish_rejects_bad_topics_and_oversized_data(database_url: str) -> None:
    async with running_engine(database_url, max_event_bytes=100):
        conn = await connect(database_url)
        try:
            with pytest.raises(Exception, match="invalid topic"):
                await conn.execute("SELECT pgcast.publish('bad topic', '1'::jsonb)")
            with pytest.raises(Exception, match="over the limit of 100 bytes"):
                await conn.execute("SELECT pgcast.publish('t', to_jsonb(repeat('x', 200)))")
        finally:
            await conn.close()


async def test_listen_connection_killed_mid_stream_loses_nothing(database_url: str) -> None:
    async with running_engine(database_url) as engine:
        killer = await connect(database_url)
        try:
            async with engine.subscribe("k", after="latest") as events:
                received = []
                killed = None
                for round_ in range(3):
                    with anyio.fail_after(5):  # back after the last kill, on a new session
                        while (
                            not engine.listener.connected or engine.listener.backend_pid == killed
                        ):
                            await anyio.sleep(0.01)
                    killed = engine.listener.backend_pid
                    await killer.execute("SELECT pg_terminate_backend($1)", killed)
                    # Publish from outside the engine while its listener is down.
                    for i in range(5):
                        await killer.execute(
                            "SELECT pgcast.publish('k', $1::jsonb)", round_ * 5 + i
                        )
                    received += await take(events, 5)
        finally:
            await killer.close()
        assert [e.data for e in received] == list(range(15))
        assert engine.listener.reconnects >= 3


async def test_slow_subscriber_loses_nothing_and_does_not_hold_back_others(
    database_url: str,
) -> None:
    async with running_engine(database_url, subscriber_buffer=4, read_batch=50) as engine:
        async with (
            engine.subscribe("s", after="latest") as slow,
            engine.subscribe("s", after="latest") as fast,
        ):
            for i in range(40):
                await engine.publish("s", i)
                (event,) = await take(fast, 1)
                assert event.data == i
            assert engine.hub.stats.overflows >= 1
            # The cut-off subscriber still counts while it drains its buffer.
            hub = engine.hub
            assert hub.subscribers + hub.draining + hub.catching_up == 2
            assert hub.draining + hub.catching_up == 1
            got = await take(slow, 40)
        assert [e.data for e in got] == list(range(40))
        assert (hub.subscribers, hub.draining, hub.catching_up) == (0, 0, 0)


async def test_live_path_reads_the_log_once_per_wake_up_for_all_subscribers(
    database_url: str,
) -> None:
    """The proof that there is no per-subscriber query on the live path."""
    async with running_engine(database_url, poll_interval_seconds=30) as engine:
        async with anyio.create_task_group() as tg:
            counts = [0] * 50

            async def follow(index: int, ready: anyio.Event) -> None:
                async with engine.subscribe("many", after="latest") as events:
                    ready.set()
                    async for _ in events:
                        counts[index] += 1
                        if counts[index] == 20:
                            reads.append(index)
                            return

            reads: list[object] = []
            for index in range(50):
                ready = anyio.Event()
                tg.start_soon(follow, index, ready)
                await ready.wait()
            hub_reads_before = engine.hub.stats.reads
            for i in range(20):
                await engine.publish("many", i)
            with anyio.fail_after(10):
                while len(reads) < 50:
                    await anyio.sleep(0.01)
        assert counts == [20] * 50
        hub_reads = engine.hub.stats.reads - hub_reads_before
        # One read per wake-up (each publish wakes once; the NOTIFY echo may add one more).
        assert hub_reads <= 2 * 20 + 2
        assert engine.hub.stats.deliveries >= 50 * 20


async def _hub_counts_once_settled(engine: Engine) -> tuple[int, int]:
    """The hub's reads and handed-over events, once the listener is up and the start-up
    read is over."""
    with anyio.fail_after(5):
        while not (engine.listener.connected and engine.hub.stats.reads):
            await anyio.sleep(0.01)
    return engine.hub.stats.reads, engine.hub.stats.handed


async def test_sql_publishes_reach_the_hub_without_a_read(database_url: str) -> None:
    """The sequencer hands what it stamps to this process's hub: no read per run, even
    though the run's own notification often arrives before its answer."""
    conn = await connect(database_url)
    try:
        async with (
            running_engine(database_url, poll_interval_seconds=30) as engine,
            engine.subscribe("sql.handed", after="latest") as events,
        ):
            reads_before, handed_before = await _hub_counts_once_settled(engine)
            for n in range(20):
                await conn.execute("SELECT pgcast.publish('sql.handed', to_jsonb($1::int))", n)
            got = await take(events, 20)
            assert engine.hub.stats.handed - handed_before == 20
            assert engine.hub.stats.reads == reads_before
    finally:
        await conn.close()
    assert [e.data for e in got] == list(range(20))
    assert [e.id for e in got] == sorted(e.id for e in got)


async def test_concurrent_publishes_reach_the_hub_without_a_read(database_url: str) -> None:
    """Group-commit batches overlap (two workers), and a batch's notification, or the
    hand-over of the batch after it, can arrive before its own hand-over: the hub waits
    for the batches in flight instead of reading their events back."""
    async with (
        running_engine(database_url, poll_interval_seconds=30) as engine,
        engine.subscribe("handed", after="latest") as events,
    ):
        reads_before, handed_before = await _hub_counts_once_settled(engine)

        async def publisher(n: int) -> None:
            for i in range(10):
                await engine.publish("handed", [n, i])

        async with anyio.create_task_group() as tg:
            for n in range(32):
                tg.start_soon(publisher, n)
        got = await take(events, 320)
        assert engine.committer.stats.batches < 320  # requests were grouped into batches
        assert engine.hub.stats.handed - handed_before == 320
        assert engine.hub.stats.reads == reads_before
    assert sorted(e.data for e in got) == sorted([n, i] for n in range(32) for i in range(10))
    assert [e.id for e in got] == sorted(e.id for e in got)


async def test_cursor_validation(database_url: str) -> None:
    async with running_engine(database_url) as engine:
        event = await engine.publish("c", 1)
        with pytest.raises(InvalidCursor):
            async with engine.subscribe("c", after="nope"):
                pass
        with pytest.raises(InvalidName):
            async with engine.subscribe("bad..topic"):
                pass
        with pytest.raises(CursorExpired) as unknown:
            async with engine.subscribe("c", after=str(event.pos + 100)):
                pass
        assert unknown.value.reason == "unknown"


async def test_pruned_resume_point_raises_cursor_expired(database_url: str) -> None:
    async with running_engine(database_url) as engine:
        events = [await engine.publish("r", i) for i in range(5)]
        async with engine.pool.acquire() as conn:
            await conn.execute("UPDATE pgcast.events SET created_at = now() - interval '30 days'")
        await engine.publish("r", 5)
        assert await engine.retention.prune_once() == 5
        with pytest.raises(CursorExpired) as info:
            async with engine.subscribe("r", after=events[1].id):
                pass
        assert info.value.reason == "pruned"
        assert info.value.oldest == f"{events[4].pos + 1:016d}"
        async with engine.subscribe("r", after="earliest") as stream:
            (only,) = await take(stream, 1)
        assert only.data == 5


async def test_batches_hand_over_everything_ready_and_stop_ends_after_it(
    database_url: str,
) -> None:
    async with running_engine(database_url) as engine:
        await engine.publish_many([engine.event("b", n) for n in range(3)])
        subscription = await engine.start_subscription("b", after="earliest")
        async with aclosing(subscription.batches()) as batches:
            backlog = await anext(batches)
            await engine.publish_many([engine.event("b", n) for n in range(3, 8)])
            with anyio.fail_after(5):
                while subscription.hub.position < backlog[-1].pos + 5:
                    await anyio.sleep(0.01)
            live = await anext(batches)
            await engine.publish("b", 8)
            with anyio.fail_after(5):
                while subscription.hub.position < live[-1].pos + 1:
                    await anyio.sleep(0.01)
            subscription.stop()
            rest = [event async for batch in batches for event in batch]
    assert [e.data for e in backlog] == [0, 1, 2]
    assert [e.data for e in live] == [3, 4, 5, 6, 7]
    # What was buffered when it stopped is still delivered; then the stream ends.
    assert [e.data for e in rest] == [8]
    assert engine.hub.subscribers == 0
