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


async def _next_later(deliveries: AsyncGenerator[Delivery, None], got: list[Delivery]) -> None:
    got.append(await anext(deliveries))


async def test_a_full_consumer_holds_the_next_message_and_hands_it_out_on_ack(
    database_url: str,
) -> None:
    async with running_engine(database_url, **FAST) as engine:
        queues = engine.queues
        await queues.enqueue([queues.message("ahead", n) for n in range(3)])
        consumer = Consumer(queues, "ahead", prefetch=1, read_ahead=1)
        claims: list[int] = []
        real_claim = queues.claim

        async def counted(queue: str, limit: int, lease_seconds: float) -> list[Message]:
            claims.append(limit)
            return await real_claim(queue, limit, lease_seconds)

        queues.claim = counted  # type: ignore[method-assign]
        try:
            async with aclosing(consumer.deliveries()) as deliveries:
                first = await anext(deliveries)
                got: list[Delivery] = []
                async with anyio.create_task_group() as tg:
                    tg.start_soon(_next_later, deliveries, got)
                    await _until(queues, "ahead", 1, ("leased", 1))  # held, not handed out
                    assert got == []
                    assert [d.data for d in consumer.ahead] == [1]
                    assert consumer.room == 0
                    claims_before_ack = len(claims)
                    await first.ack()
                assert [d.data for d in got] == [1]
                assert len(claims) == claims_before_ack  # handed out with no claim between
                # Waiting for room again, it holds the third one for its client.
                async with anyio.create_task_group() as tg:
                    tg.start_soon(_next_later, deliveries, got)
                    await _until(queues, "ahead", 2, ("leased", 1))
                    tg.cancel_scope.cancel()
        finally:
            await consumer.release_all()
        states = await _states(queues, "ahead")
    # Leaving gave back the one handed out as a disconnect, and the held one unused.
    assert states == {0: ("acked", 1), 1: ("ready", 1), 2: ("ready", 0)}


async def test_a_slow_client_gets_its_held_message_taken_back_and_stops_reading_ahead(
    database_url: str,
) -> None:
    async with running_engine(database_url, **FAST) as engine:
        queues = engine.queues
        await queues.enqueue([queues.message("slow", n) for n in range(6)])
        consumer = Consumer(queues, "slow", prefetch=1, lease_seconds=1.0, read_ahead=1)
        assert consumer.ahead_seconds == pytest.approx(0.1)
        try:
            async with aclosing(consumer.deliveries()) as deliveries:
                first = await anext(deliveries)
                got: list[Delivery] = []
                async with anyio.create_task_group() as tg:
                    tg.start_soon(_next_later, deliveries, got)
                    await _until(queues, "slow", 1, ("leased", 1))
                    # Not handed out within 0.1 s: back to the queue, its attempt unused,
                    # where another consumer can have it.
                    await _until(queues, "slow", 1, ("ready", 0))
                    assert not consumer.ahead
                    async with engine.consume("slow") as others:
                        with anyio.fail_after(5):
                            taken = await anext(others)
                        await taken.ack()
                    await first.ack()
                assert taken.data == 1
                assert [d.data for d in got] == [2]
                # That client held its message 0.1 s or more: no reading ahead now.
                async with anyio.create_task_group() as tg:
                    tg.start_soon(_next_later, deliveries, got)
                    await anyio.sleep(0.3)
                    assert (await _states(queues, "slow"))[3] == ("ready", 0)
                    assert not consumer.ahead
                    await got[-1].ack()
                assert [d.data for d in got] == [2, 3]
                # A quick ack: it keeps pace again, so it holds the next one again.
                await got[-1].ack()
                with anyio.fail_after(5):
                    got.append(await anext(deliveries))
                async with anyio.create_task_group() as tg:
                    tg.start_soon(_next_later, deliveries, got)
                    await _until(queues, "slow", 5, ("leased", 1))
                    tg.cancel_scope.cancel()
                assert [d.data for d in got] == [2, 3, 4]
        finally:
            await consumer.release_all()
        states = await _states(queues, "slow")
    assert states == {
        0: ("acked", 1),
        1: ("acked", 1),
        2: ("acked", 1),
        3: ("acked", 1),
        4: ("ready", 1),
        5: ("ready", 0),
    }
