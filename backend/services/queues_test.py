"""Queues against a real Postgres: leases, fencing, backoff, dead-letter, release."""

from __future__ import annotations

import time
from contextlib import aclosing
from datetime import datetime

import anyio
import pytest

from backend.connectors.database import connect
from backend.core.errors import Conflict, InvalidEvent, NotFound
from backend.services.consume import Consumer
from backend.services.settle import Retry
from backend.testing.engine import running_engine, take

pytestmark = [pytest.mark.integrated, pytest.mark.anyio]

FAST = {
    "queue_backoff_base_seconds": 0.4,
    "queue_backoff_cap_seconds": 2,
    "queue_reap_interval_seconds": 0.1,
    "poll_interval_seconds": 0.2,
}


async def test_enqueue_consume_ack(database_url: str) -> None:
    async with running_engine(database_url, **FAST) as engine:
        first = await engine.enqueue("jobs", {"n": 1}, key="k")
        await engine.enqueue("jobs", {"n": 2})
        got = []
        async with engine.consume("jobs", prefetch=2) as deliveries:
            for _ in range(2):
                with anyio.fail_after(5):
                    delivery = await anext(deliveries)
                got.append((delivery.data, delivery.attempt))
                await delivery.ack()
        (stats,) = await engine.queues.stats("jobs")
    assert got == [({"n": 1}, 1), ({"n": 2}, 1)]
    assert first.key == "k"
    assert (stats.ready, stats.leased, stats.dead) == (0, 0, 0)


async def test_each_message_goes_to_one_consumer_at_a_time(database_url: str) -> None:
    async with running_engine(database_url, **FAST) as engine:
        for i in range(30):
            await engine.enqueue("work", i)
        seen: list[int] = []

        async def worker() -> None:
            async with engine.consume("work", prefetch=3) as deliveries:
                async for delivery in deliveries:
                    seen.append(delivery.data)
                    await delivery.ack()
                    if len(seen) >= 30:
                        return

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for _ in range(4):
                    tg.start_soon(worker)
                while len(seen) < 30:
                    await anyio.sleep(0.05)
                tg.cancel_scope.cancel()
    assert sorted(seen) == list(range(30))


async def test_expired_lease_redelivers_and_the_stale_ack_is_refused(database_url: str) -> None:
    async with running_engine(database_url, **FAST) as engine:
        await engine.enqueue("lease", "x")
        async with engine.consume("lease", lease=0.3) as deliveries:
            with anyio.fail_after(5):
                stale = await anext(deliveries)
            with anyio.fail_after(5):
                again = await anext(deliveries)
            assert again.id == stale.id
            assert again.attempt == 2
            with pytest.raises(Conflict):
                await stale.ack()
            await again.ack()
            with pytest.raises(Conflict):
                await again.ack()


async def test_nack_backs_off_then_dead_letters_with_lifecycle_events(database_url: str) -> None:
    async with running_engine(database_url, **FAST) as engine:
        message = await engine.enqueue("fail", "job", max_attempts=3)
        async with engine.subscribe("pgcast.queues.fail", after="latest") as lifecycle:
            async with engine.consume("fail") as deliveries:
                for attempt in (1, 2, 3):
                    with anyio.fail_after(10):
                        delivery = await anext(deliveries)
                    assert delivery.attempt == attempt
                    nacked_at = time.monotonic()
                    moved = await delivery.nack(error=f"boom {attempt}")
                    if attempt < 3:
                        assert moved.state == "ready"
                        with anyio.fail_after(10):
                            nxt = await anext(deliveries)
                        # base 0.4 s * 2^(attempt-1), with jitter in [0.5, 1)
                        assert time.monotonic() - nacked_at >= 0.2 * 2 ** (attempt - 1) - 0.05
                        await nxt.nack(delay=0, error="requeue now")
                        break
                    assert moved.state == "dead"
            events = await take(lifecycle, 2)
        assert [e.type for e in events] == ["retried", "retried"]
        assert events[0].key == str(message.id)


async def test_max_attempts_dead_letter_and_requeue(database_url: str) -> None:
    async with running_engine(database_url, **FAST) as engine:
        message = await engine.enqueue("dl", "job", max_attempts=2)
        async with engine.subscribe("pgcast.queues.dl", after="latest") as lifecycle:
            async with engine.consume("dl") as deliveries:
                for _ in range(2):
                    with anyio.fail_after(10):
                        delivery = await anext(deliveries)
                    await delivery.nack(delay=0, error="always fails")
            (dead,) = await engine.queues.dead("dl")
            assert (dead.id, dead.attempt, dead.last_error) == (message.id, 2, "always fails")
            (stats,) = await engine.queues.stats("dl")
            assert stats.dead == 1
            (requeued,) = await engine.queues.requeue("dl", message.id)
            assert requeued.attempt == 0
            types = [e.type for e in await take(lifecycle, 3)]
        assert types == ["retried", "dead_lettered", "requeued"]
        with pytest.raises(Conflict):
            await engine.queues.requeue("dl", message.id)
        with pytest.raises(NotFound):
            await engine.queues.requeue("dl", 999999)


async def test_leaving_the_consumer_returns_unsettled_messages_at_once(database_url: str) -> None:
    async with running_engine(database_url, **FAST) as engine:
        await engine.enqueue("rel", 1)
        async with engine.consume("rel", lease=60) as deliveries:
            with anyio.fail_after(5):
                first = await anext(deliveries)
        async with engine.consume("rel", lease=60) as deliveries:
            with anyio.fail_after(2):
                again = await anext(deliveries)
        assert again.id == first.id


async def test_sql_enqueue_is_delivered_only_if_committed(database_url: str) -> None:
    async with running_engine(database_url, **FAST) as engine:
        conn = await connect(database_url)
        try:
            tx = conn.transaction()
            await tx.start()
            await conn.execute("SELECT pgcast.enqueue('sqlq', '\"rolled back\"'::jsonb)")
            await tx.rollback()
            async with conn.transaction():
                await conn.execute(
                    "SELECT pgcast.enqueue('sqlq', '\"committed\"'::jsonb, interval '0', 3)"
                )
            with pytest.raises(Exception, match="max_attempts must be at least 1"):
                await conn.execute("SELECT pgcast.enqueue('sqlq', '1'::jsonb, interval '0', 0)")
            with pytest.raises(Exception, match="delay must not be negative"):
                await conn.execute("SELECT pgcast.enqueue('sqlq', '1'::jsonb, interval '-1 s')")
        finally:
            await conn.close()
        async with engine.consume("sqlq") as deliveries:
            with anyio.fail_after(5):
                delivery = await anext(deliveries)
            await delivery.ack()
        assert delivery.data == "committed"
        assert delivery.message.max_attempts == 3
        (stats,) = await engine.queues.stats("sqlq")
        assert stats.ready == 0


async def test_bad_input_is_refused(database_url: str) -> None:
    async with running_engine(database_url, **FAST) as engine:
        with pytest.raises(InvalidEvent, match="max_attempts"):
            await engine.enqueue("bad", 1, max_attempts=0)
        with pytest.raises(InvalidEvent, match="delay_seconds"):
            await engine.enqueue("bad", 1, delay_seconds=-1)
        message = await engine.enqueue("bad", 1)
        with pytest.raises(NotFound):
            await engine.queues.ack("other", message.id, "lease")
        with pytest.raises(Conflict):
            await engine.queues.ack("bad", message.id, "not-the-lease")


async def test_a_settle_by_another_path_frees_the_consumers_room(database_url: str) -> None:
    """Acked here through the service (as HTTP does): room at once, without a database
    check. Acked in another process: room after one quiet poll."""
    slow_poll = {**FAST, "poll_interval_seconds": 30}
    async with (
        running_engine(database_url, **slow_poll) as engine,
        running_engine(database_url, **FAST) as other,
    ):
        for n in range(3):
            await engine.enqueue("room", n)
        async with engine.consume("room", prefetch=1) as deliveries:
            first = await anext(deliveries)
            await engine.queues.ack("room", first.id, first.lease)
            with anyio.fail_after(2):
                second = await anext(deliveries)
        async with other.consume("room", prefetch=1) as deliveries:
            third = await anext(deliveries)
            await engine.queues.ack("room", third.id, third.lease)
            assert third.lease in other.queues.holders  # this process has not heard of it
            with anyio.fail_after(5):
                fourth_or_end = await anext(deliveries)
    assert [first.data, second.data, third.data] == [0, 1, 2]
    # Room came back after the other process's quiet poll: the next claim found the
    # second message, which the first consumer returned when it left.
    assert fourth_or_end.data == 1


async def test_a_settlement_on_its_way_frees_room_and_a_failed_one_takes_it_back(
    database_url: str,
) -> None:
    """The next message is claimed while an ack commits; a settlement that fails holds
    its room again, and leaving still gives back what was not settled."""
    async with running_engine(database_url, **FAST) as engine:
        queues = engine.queues
        await queues.enqueue([queues.message("room", n) for n in range(3)])
        consumer = Consumer(queues, "room", prefetch=1)
        try:
            async with aclosing(consumer.deliveries()) as deliveries:
                with anyio.fail_after(10):
                    first = await anext(deliveries)
                    assert consumer.room == 0
                    ack = first.settling()
                    assert consumer.room == 1
                    second = await anext(deliveries)
                assert await queues.still_leased([first.lease]) == {first.lease}
                second.settling(Retry(0))
                second.not_settled()
                assert consumer.room == 0
                assert await queues.settle([ack]) == [None]
                assert consumer.room == 0
        finally:
            await consumer.release_all()
        (stats,) = await queues.stats("room")
        assert await queues.still_leased([first.lease, second.lease]) == set()
    assert (stats.ready, stats.leased) == (2, 0)


async def test_consumers_woken_together_ask_once_when_the_next_message_is_due(
    database_url: str,
) -> None:
    async with running_engine(database_url, **FAST) as engine:
        queues = engine.queues
        await queues.enqueue([queues.message("due", 1, delay_seconds=60)])
        asked: list[str] = []
        real = queues._next_available

        async def counted(queue: str) -> datetime | None:
            asked.append(queue)
            return await real(queue)

        queues._next_available = counted  # type: ignore[method-assign]
        woken = queues.waker.event("due")
        answers: list[datetime | None] = []

        async def ask() -> None:
            answers.append(await queues.next_available("due", woken))

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for _ in range(5):
                    tg.start_soon(ask)
            queues.changed("due")
            after_wake = await queues.next_available("due", woken)
    assert asked == ["due", "due"]
    assert len(answers) == 5
    assert answers[0] is not None
    assert set(answers) == {answers[0]} == {after_wake}
