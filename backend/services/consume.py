"""Consumers: a stream of leased deliveries with at most `prefetch` unsettled at once.

`consume(...)` is an async context manager around an async iterator of `Delivery`.
Leaving it returns every unsettled message to the queue at once (not after the lease),
so a consumer that stops, is cancelled or disconnects never strands work; settled
(acked) messages stay acked.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import anyio

from backend.connectors.store.queues import Moved
from backend.entities.message import Message
from backend.services.queues import MAX_LEASE_SECONDS, Queues, integer, number, validate_queue

CLEANUP_SECONDS = 5.0


@dataclass(eq=False)
class Delivery:
    """One leased message; settle it with `ack`, `nack` or keep it with `extend`."""

    consumer: Consumer
    message: Message

    @property
    def id(self) -> int:
        return self.message.id

    @property
    def data(self) -> Any:
        return self.message.data

    @property
    def attempt(self) -> int:
        return self.message.attempt

    @property
    def lease(self) -> str:
        assert self.message.lease is not None
        return self.message.lease

    async def ack(self) -> None:
        await self.consumer.queues.ack(self.message.queue, self.id, self.lease)
        self.consumer.settled(self.lease)

    async def nack(self, delay: float | None = None, error: str | None = None) -> Moved:
        moved = await self.consumer.queues.nack(
            self.message.queue, self.id, self.lease, delay=delay, error=error
        )
        self.consumer.settled(self.lease)
        return moved

    async def extend(self, seconds: float) -> datetime:
        return await self.consumer.queues.extend(self.message.queue, self.id, self.lease, seconds)


@dataclass(eq=False)
class Consumer:
    """Claims messages while it has room; waits on wake-ups (and a slow poll) otherwise."""

    queues: Queues
    queue: str
    prefetch: int = 1
    lease_seconds: float = 30.0
    in_flight: dict[str, int] = field(default_factory=dict)

    def settled(self, lease: str) -> None:
        self.queues.holders.pop(lease, None)
        if self.in_flight.pop(lease, None) is not None:
            self.queues.waker.wake(self.queue)

    async def deliveries(self) -> AsyncGenerator[Delivery, None]:
        quiet = False
        while True:
            woken = self.queues.waker.event(self.queue)
            room = self.prefetch - len(self.in_flight)
            if room <= 0 and quiet:
                # Settles in this process free room at once (`Queues.holders`); only after
                # a quiet poll ask the database about the rest (another process, reaped).
                await self._forget_settled_elsewhere()
                room = self.prefetch - len(self.in_flight)
            claimed = (
                await self.queues.claim(self.queue, room, self.lease_seconds) if room > 0 else []
            )
            for message in claimed:
                assert message.lease is not None
                self.in_flight[message.lease] = message.id
                self.queues.holders[message.lease] = self.settled
                yield Delivery(self, message)
            if claimed:
                continue
            with anyio.move_on_after(await self._idle_wait(room)) as waited:
                await woken.wait()
            quiet = waited.cancelled_caught

    async def _idle_wait(self, room: int) -> float:
        """Sleep until woken, the next delayed message is due, or the safety poll."""
        wait = self.queues.poll_interval
        if room > 0:
            due = await self.queues.next_available(self.queue)
            if due is not None:
                wait = min(wait, max(0.0, (due - datetime.now(UTC)).total_seconds()) + 0.01)
        return wait

    async def _forget_settled_elsewhere(self) -> None:
        """Messages settled in another process, or reaped after their lease, free room too."""
        held = await self.queues.still_leased(list(self.in_flight))
        for lease in [lease for lease in self.in_flight if lease not in held]:
            del self.in_flight[lease]
            self.queues.holders.pop(lease, None)

    async def release_all(self) -> None:
        leases, self.in_flight = list(self.in_flight), {}
        for lease in leases:
            self.queues.holders.pop(lease, None)
        with anyio.move_on_after(CLEANUP_SECONDS, shield=True):
            await self.queues.release(leases)


@asynccontextmanager
async def consume(
    queues: Queues, queue: str, *, prefetch: int = 1, lease: float = 30.0
) -> AsyncIterator[AsyncIterator[Delivery]]:
    """`async with consume(queues, "jobs", prefetch=4) as deliveries: async for d in deliveries`."""
    consumer = Consumer(
        queues,
        validate_queue(queue),
        integer(prefetch, "prefetch", 1, 1000),
        number(lease, "lease", 0.1, MAX_LEASE_SECONDS),
    )
    try:
        async with aclosing(consumer.deliveries()) as deliveries:
            yield deliveries
    finally:
        await consumer.release_all()
