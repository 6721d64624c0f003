"""Group commit batches concurrent publishes; a bad request fails only itself."""

from __future__ import annotations

import anyio
import pytest

from backend.connectors.database import Connection, connect, open_pool
from backend.core.errors import InvalidEvent, ShuttingDown
from backend.entities.event import Event, NewEvent
from backend.services.group_commit import GroupCommitter
from backend.services.publish import NOBODY, new_event
from backend.testing.engine import running_engine, take

pytestmark = [pytest.mark.integrated, pytest.mark.anyio]


async def test_concurrent_publishes_share_transactions(database_url: str) -> None:
    async with running_engine(database_url, group_commit_wait_ms=20) as engine:
        results: dict[int, Event] = {}

        async def one(i: int) -> None:
            (results[i],) = await engine.publish_many([engine.event("gc", i)])

        async with engine.subscribe("gc", after="latest") as events:
            async with anyio.create_task_group() as tg:
                for i in range(50):
                    tg.start_soon(one, i)
            delivered = await take(events, 50)
        assert sorted(e.data for e in delivered) == list(range(50))
        assert {results[i].data for i in range(50)} == set(range(50))
        assert engine.committer.stats.events == 50
        assert engine.committer.stats.batches < 50


async def test_one_bad_request_in_a_batch_fails_only_itself(database_url: str) -> None:
    async with running_engine(database_url, group_commit_wait_ms=20) as engine:
        outcome: dict[str, object] = {}

        async def good(name: str) -> None:
            (event,) = await engine.publish_many([engine.event("gc", name)])
            outcome[name] = event.data

        async def bad() -> None:
            # Postgres refuses \u0000 inside jsonb; built directly, this event skips the
            # check that otherwise refuses it before it reaches the database.
            try:
                await engine.publish_many([NewEvent("gc", b'"nul\\u0000byte"')])
            except InvalidEvent as exc:
                outcome["bad"] = exc

        async with anyio.create_task_group() as tg:
            tg.start_soon(good, "a")
            tg.start_soon(bad)
            tg.start_soon(good, "b")
        assert outcome["a"] == "a"
        assert outcome["b"] == "b"
        assert isinstance(outcome["bad"], InvalidEvent)
        assert "rejected" in str(outcome["bad"])


async def _wait_for_a_lock_wait(conn: Connection) -> None:
    with anyio.fail_after(5):
        while not await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ):
            await anyio.sleep(0.02)


async def test_stopping_answers_every_request_it_did_not_commit(database_url: str) -> None:
    async with open_pool(database_url, size=2) as pool:
        committer = GroupCommitter(pool, NOBODY, workers=1, max_requests=1)
        outcome: dict[str, list[Event] | ShuttingDown] = {}

        async def publish(name: str) -> None:
            try:
                outcome[name] = await committer.publish([new_event("gc", name, max_bytes=100)])
            except ShuttingDown as exc:
                outcome[name] = exc

        locker = await connect(database_url)
        try:
            # Holding the sequencer's row lock keeps the first commit in flight.
            lock = locker.transaction()
            await lock.start()
            await locker.execute("SELECT 1 FROM pgcast.log_state WHERE id = 1 FOR UPDATE")
            async with anyio.create_task_group() as tg:
                running = anyio.CancelScope()

                async def run() -> None:
                    with running:
                        await committer.run()

                tg.start_soon(run)
                tg.start_soon(publish, "first")
                await _wait_for_a_lock_wait(locker)
                tg.start_soon(publish, "second")
                tg.start_soon(publish, "third")
                await anyio.sleep(0.1)
                running.cancel()
                await anyio.sleep(0.1)
                assert outcome == {}  # the batch in flight is finished first
                await lock.rollback()
        finally:
            await locker.close()
        first = outcome["first"]
        assert isinstance(first, list)
        assert [event.data for event in first] == ["first"]
        for name in ("second", "third"):
            refused = outcome[name]
            assert isinstance(refused, ShuttingDown)
            assert "nothing was published" in refused.message
        with anyio.fail_after(1), pytest.raises(ShuttingDown):
            await committer.publish([new_event("gc", "late", max_bytes=100)])
        async with pool.acquire() as conn:
            stored = await conn.fetch("SELECT data FROM pgcast.events ORDER BY pos")
        assert [row["data"] for row in stored] == ["first"]


async def test_a_full_queue_holds_publishers_back_until_a_batch_leaves_it(
    database_url: str,
) -> None:
    async with open_pool(database_url, size=2) as pool:
        committer = GroupCommitter(pool, NOBODY, workers=1, max_requests=1, queue_size=1)
        published: list[str] = []

        async def publish(name: str) -> None:
            (event,) = await committer.publish([new_event("gc", name, max_bytes=100)])
            published.append(event.data)

        locker = await connect(database_url)
        try:
            lock = locker.transaction()
            await lock.start()
            await locker.execute("SELECT 1 FROM pgcast.log_state WHERE id = 1 FOR UPDATE")
            async with anyio.create_task_group() as tg:
                tg.start_soon(committer.run)
                tg.start_soon(publish, "first")
                await _wait_for_a_lock_wait(locker)
                tg.start_soon(publish, "second")  # queued: the queue is now full
                await anyio.sleep(0.05)
                tg.start_soon(publish, "third")  # waits for room
                await anyio.sleep(0.05)
                assert [r.events[0].data_json for r in committer._queue] == [b'"second"']
                await lock.rollback()
                with anyio.fail_after(5):
                    while len(published) < 3:
                        await anyio.sleep(0.01)
                tg.cancel_scope.cancel()
        finally:
            await locker.close()
        assert published == ["first", "second", "third"]
