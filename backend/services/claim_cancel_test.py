"""Claims cancelled at random moments: no lease is ever stranded, no unseen claim costs an attempt.

Consumers (prefetch 1 to 5, some reading ahead) and long-poll JSON claims run against a
real Postgres and are cancelled after a random few milliseconds, which lands in every
step: waiting for a connection, the claim statement, the connection going back to the
pool, between the deliveries of one batch, while a read-ahead message is held, in an ack.
Afterwards every message must be ready, acked or dead-lettered, none leased, and its
attempt count must equal the number of times it actually reached a consumer. A second
mix has every consumer reading ahead and acking most messages, with some clients slower
than their consumer's holding time, so kept messages are also taken over by idle
consumers and given back while cancellations land.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest

from backend.connectors.database import connect
from backend.services.consume import claim_within, consume
from backend.services.queues import Queues
from backend.testing.engine import running_engine

pytestmark = [pytest.mark.integrated, pytest.mark.anyio]

QUEUE = "cancelled"
CONSUMERS = 3
POLL_LEASE = 0.2
FAST = {"poll_interval_seconds": 0.05, "queue_reap_interval_seconds": 0.1}


@dataclass(frozen=True)
class Mix:
    """One run's shape: how many messages and rounds, and how its consumers behave."""

    messages: int
    rounds: int
    longest: float
    """Each consumer or poller is cancelled after up to this many seconds."""
    read_ahead: tuple[int, ...]
    """Read-ahead settings to pick from (a negative one means the consumer's prefetch)."""
    ack_rate: float
    lease: float
    slow_rate: float = 0.0
    """How often a consumer's client sits on a message past its consumer's holding time."""


CLAIMS = Mix(40, 120, 0.015, (0, 1, -1), 0.3, 60)
READ_AHEAD = Mix(1000, 20, 0.12, (1, 4, 8, -1), 0.9, 0.5, slow_rate=0.1)


@dataclass
class Seen:
    """What the consumers saw: each delivery that reached them, each ack tried or confirmed."""

    delivered: Counter[int] = field(default_factory=Counter)
    ack_tried: set[int] = field(default_factory=set)
    acked: set[int] = field(default_factory=set)


async def _consumer(queues: Queues, rng: random.Random, seen: Seen, mix: Mix) -> None:
    prefetch = rng.randint(1, 5)
    read_ahead = rng.choice(mix.read_ahead)
    async with consume(
        queues,
        QUEUE,
        prefetch=prefetch,
        lease=mix.lease,
        read_ahead=prefetch if read_ahead < 0 else read_ahead,
    ) as deliveries:
        async for delivery in deliveries:
            seen.delivered[delivery.id] += 1
            if rng.random() < mix.ack_rate:
                seen.ack_tried.add(delivery.id)
                await delivery.ack()
                seen.acked.add(delivery.id)
            slow = rng.random() < mix.slow_rate
            await anyio.sleep(mix.lease / 5 if slow else rng.uniform(0, 0.002))


async def _poller(queues: Queues, rng: random.Random, seen: Seen, _mix: Mix) -> None:
    """JSON claims keep their leases until they expire: short ones, for the reaper."""
    while True:
        limit, wait = rng.randint(1, 5), rng.uniform(0, 0.01)
        claimed = await claim_within(queues, QUEUE, limit, POLL_LEASE, wait)
        seen.delivered.update(m.id for m in claimed)


async def _cancelled_after(
    delay: float, run: Callable[[Queues, random.Random, Seen, Mix], Awaitable[None]], *args: Any
) -> None:
    with anyio.move_on_after(delay):
        await run(*args)


@pytest.mark.parametrize("mix", [CLAIMS, READ_AHEAD], ids=["claims", "read_ahead"])
async def test_random_cancellations_strand_nothing(database_url: str, mix: Mix) -> None:
    rng = random.Random(19)
    seen = Seen()
    async with running_engine(database_url, **FAST) as engine:
        queues = engine.queues
        await queues.enqueue(
            [
                queues.message(QUEUE, i, max_attempts=rng.choice([1, 1000]))
                for i in range(mix.messages)
            ]
        )
        for _ in range(mix.rounds):
            async with anyio.create_task_group() as tg:
                for _ in range(CONSUMERS):
                    run = _consumer if rng.random() < 0.7 else _poller
                    own_rng = random.Random(rng.random())
                    delay = rng.uniform(0, mix.longest)
                    tg.start_soon(_cancelled_after, delay, run, queues, own_rng, seen, mix)
        await anyio.sleep(POLL_LEASE + 0.5)  # the reaper returns the JSON claims
        assert queues.keeping == {}
    conn = await connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT id, state, attempt, max_attempts FROM pgcast.queue_messages WHERE queue = $1",
            QUEUE,
        )
    finally:
        await conn.close()
    assert len(rows) == mix.messages
    for row in rows:
        message = row["id"]
        assert row["state"] != "leased", f"message {message} is leased to a gone consumer"
        assert row["attempt"] == seen.delivered[message], (
            f"message {message}: {row['attempt']} attempts, delivered {seen.delivered[message]}"
        )
        if row["state"] == "acked":
            assert message in seen.ack_tried
        if message in seen.acked:
            assert row["state"] == "acked"
        if row["state"] == "dead":
            assert seen.delivered[message] >= row["max_attempts"]
    assert sum(seen.delivered.values()) > mix.messages, "too few claims to mean anything"
