"""Reading ahead against a real Postgres: a full consumer holds the next message for its
client, hands it out without a claim when an ack comes, and gives it back unused when the
client is slower than `ahead_seconds` or leaves."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing

import anyio
import pytest

from backend.entities.message import Message
from backend.services.consume import Consumer, Delivery
from backend.services.queues import Queues
from backend.testing.engine import running_engine

pytestmark = [pytest.mark.integrated, pytest.mark.anyio]

FAST = {"queue_reap_interval_seconds": 0.1, "poll_interval_seconds": 0.2}


async def _states(queues: Queues, queue: str) -> dict[int, tuple[str, int]]:
    """Each message's (state, attempt), by its data (the number it was enqueued with)."""
    async with queues.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT data::int AS n, state, attempt FROM pgcast.queue_messages WHERE queue = $1",
            queue,
        )
    return {row["n"]: (row["state"], row["attempt"]) for row in rows}


async def _until(queues: Queues, queue: str, n: int, wanted: tuple[str, int]) -> None:
    with anyio.fail_after(5):
        while (await _states(queues, queue))[n] != wanted:
            await anyio.sleep(0.01)


def _count_claims(queues: Queues) -> list[int]:
    """The limit of every claim `queues` makes from now on (the real claim still runs)."""
    claims: list[int] = []
    real_claim = queues.claim

    async def counted(queue: str, limit: int, lease_seconds: float) -> list[Message]:
        claims.append(limit)
        return await real_claim(queue, limit, lease_seconds)

    queues.claim = counted  # type: ignore[method-assign]
    return claims


async def _ack_at_once(delivery: Delivery) -> None:
    """Ack as the SSE and WebSocket transports do: the client lets go first, and that is
    when its pace is noted, so a commit slowed by a loaded machine does not make a quick
    client look slow (`Delivery.ack` notes the pace after its commit)."""
    (outcome,) = await delivery.consumer.queues.settle([delivery.settling()])
    assert outcome is None


async def _next_later(deliveries: AsyncGenerator[Delivery, None], got: list[Delivery]) -> None:
    got.append(await anext(deliveries))


async def test_a_full_consumer_holds_the_next_message_and_hands_it_out_on_ack(
    database_url: str,
) -> None:
    async with running_engine(database_url, **FAST) as engine:
        queues = engine.queues
        await queues.enqueue([queues.message("ahead", n) for n in range(4)])
        consumer = Consumer(queues, "ahead", prefetch=1, read_ahead=1)
        claims = _count_claims(queues)
        try:
            async with aclosing(consumer.deliveries()) as deliveries:
                # Its client's pace is not known yet: nothing is held for it.
                first = await anext(deliveries)
                got: list[Delivery] = []
                async with anyio.create_task_group() as tg:
                    tg.start_soon(_next_later, deliveries, got)
                    await anyio.sleep(0.1)
                    assert (await _states(queues, "ahead"))[1] == ("ready", 0)
                    await first.ack()
                await _ack_at_once(got[0])  # now it is known to keep pace
                second = await anext(deliveries)
                # A client that keeps pace: while it is full, the next one is held for it.
                async with anyio.create_task_group() as tg:
                    tg.start_soon(_next_later, deliveries, got)
                    await _until(queues, "ahead", 3, ("leased", 1))
                    assert len(got) == 1
                    assert [d.data for d in consumer.ahead] == [3]
                    assert consumer.room == 0
                    claims_before_ack = len(claims)
                    await second.ack()
                assert [d.data for d in got] == [1, 3]
                assert len(claims) == claims_before_ack  # handed out with no claim between
        finally:
            await consumer.release_all()
        states = await _states(queues, "ahead")
    # Leaving gave back the one handed out and not settled as a disconnect.
    assert states == {0: ("acked", 1), 1: ("acked", 1), 2: ("acked", 1), 3: ("ready", 1)}


async def test_a_slow_client_gets_its_held_message_taken_back_and_stops_reading_ahead(
    database_url: str,
) -> None:
    async with running_engine(database_url, **FAST) as engine:
        queues = engine.queues
        await queues.enqueue([queues.message("slow", n) for n in range(7)])
        # The longest holding time (the cap, 0.25 s): an ack counts as fast up to 0.125 s
        # after its message was handed out.
        consumer = Consumer(queues, "slow", prefetch=1, lease_seconds=2.5, read_ahead=1)
        assert consumer.ahead_seconds == pytest.approx(0.25)
        try:
            async with aclosing(consumer.deliveries()) as deliveries:
                await _ack_at_once(await anext(deliveries))
                second = await anext(deliveries)  # the first went fast: it reads ahead
                got: list[Delivery] = []
                async with anyio.create_task_group() as tg:
                    tg.start_soon(_next_later, deliveries, got)
                    await _until(queues, "slow", 2, ("leased", 1))
                    # Not handed out within 0.25 s: back to the queue, its attempt unused,
                    # where another consumer can have it.
                    await _until(queues, "slow", 2, ("ready", 0))
                    assert not consumer.ahead
                    async with engine.consume("slow") as others:
                        with anyio.fail_after(5):
                            taken = await anext(others)
                        await taken.ack()
                    await second.ack()
                assert taken.data == 2
                assert [d.data for d in got] == [3]
                # That client held its message 0.3 s: nothing is held for it now, not
                # even briefly (checked while it waits, as a held message would go back
                # within 0.25 s and then look the same).
                async with anyio.create_task_group() as tg:
                    tg.start_soon(_next_later, deliveries, got)
                    with anyio.move_on_after(0.3):
                        while True:
                            assert not consumer.ahead
                            assert (await _states(queues, "slow"))[4] == ("ready", 0)
                            await anyio.sleep(0.01)
                    await got[-1].ack()
                assert [d.data for d in got] == [3, 4]
                # A quick ack: it keeps pace again, so it holds the next one again.
                await _ack_at_once(got[-1])
                with anyio.fail_after(5):
                    got.append(await anext(deliveries))
                async with anyio.create_task_group() as tg:
                    tg.start_soon(_next_later, deliveries, got)
                    await _until(queues, "slow", 6, ("leased", 1))
                    tg.cancel_scope.cancel()
                assert [d.data for d in got] == [3, 4, 5]
        finally:
            await consumer.release_all()
        states = await _states(queues, "slow")
    assert states == {
        0: ("acked", 1),
        1: ("acked", 1),
        2: ("acked", 1),
        3: ("acked", 1),
        4: ("acked", 1),
        5: ("ready", 1),
        6: ("ready", 0),
    }


async def test_a_fast_client_gets_several_held_in_one_claim(database_url: str) -> None:
    """Held messages are claimed once half of them are gone, enough for the target."""
    async with running_engine(database_url, **FAST) as engine:
        queues = engine.queues
        await queues.enqueue([queues.message("batch", n) for n in range(20)])
        consumer = Consumer(queues, "batch", prefetch=1, lease_seconds=30, read_ahead=4)
        claims = _count_claims(queues)
        seen: list[int] = []
        try:
            async with aclosing(consumer.deliveries()) as deliveries:
                with anyio.fail_after(10):
                    async for delivery in deliveries:
                        seen.append(delivery.data)
                        await _ack_at_once(delivery)
                        if len(seen) == 20:
                            break
        finally:
            await consumer.release_all()
    assert seen == list(range(20))
    # The first claim is for the client alone; once its pace is known, each claim also
    # takes up to 4 to hold, and the next comes when those are handed out.
    assert claims[0] == 1
    assert max(claims) == 5
    assert len(claims) <= 6


async def test_an_idle_consumer_takes_over_what_a_busy_one_keeps(database_url: str) -> None:
    async with running_engine(database_url, **FAST) as engine:
        queues = engine.queues
        await queues.enqueue([queues.message("share", n) for n in range(6)])
        busy = Consumer(queues, "share", prefetch=1, read_ahead=4)
        idle = Consumer(queues, "share", prefetch=1)
        claims = _count_claims(queues)
        try:
            async with (
                aclosing(busy.deliveries()) as busy_deliveries,
                aclosing(idle.deliveries()) as idle_deliveries,
            ):
                await _ack_at_once(await anext(busy_deliveries))
                # One claim: this one and 4 to keep, as the pace of the first ack promises.
                held = await anext(busy_deliveries)
                kept = [d.data for d in busy.ahead]
                assert kept == [2, 3, 4, 5]
                claims_before = len(claims)
                with anyio.fail_after(5):
                    taken = await anext(idle_deliveries)
                assert taken.data == kept[-1]  # the newest kept one, without a claim
                assert len(claims) == claims_before
                assert taken.consumer is idle
                assert [d.data for d in busy.ahead] == kept[:-1]
                await taken.ack()
                await held.ack()
                rest = []
                for _ in range(3):
                    with anyio.fail_after(5):
                        delivery = await anext(busy_deliveries)
                    rest.append(delivery.data)
                    await delivery.ack()
        finally:
            await busy.release_all()
            await idle.release_all()
        states = await _states(queues, "share")
        assert queues.keeping == {}
    assert held.data == 1
    assert rest == [n for n in range(2, 6) if n != kept[-1]]
    assert states == dict.fromkeys(range(6), ("acked", 1))
