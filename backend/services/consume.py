"""Consumers: a stream of leased deliveries with at most `prefetch` unsettled at once
(a settlement on its way to the database no longer counts: `Delivery.settling`).

`consume(...)` is an async context manager around an async iterator of `Delivery`.
Leaving it returns every unsettled message to the queue at once (not after the lease),
so a consumer that stops, is cancelled or disconnects never strands work; settled
(acked) messages stay acked, and claimed messages that never reached the consumer go
back with their attempt restored.

With `read_ahead`, a consumer claims up to that many more than its client may hold and
keeps them until the client has room, so the next message is at hand when an ack comes
instead of a claim away, and claims come in batches. A held message has its lease
running, so it is held at most `ahead_seconds` (then it goes back, its attempt unused),
and the consumer holds only as many as its client's pace takes in half that time: none
before the client has settled a message, none after held ones had to go back.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from math import inf
from time import monotonic
from typing import Any

import anyio

from backend.connectors.store.queues import Moved
from backend.entities.message import Message
from backend.services.queues import (
    CLEANUP_SECONDS,
    MAX_LEASE_SECONDS,
    Queues,
    integer,
    number,
    validate_queue,
)
from backend.services.settle import Retry, Settle

AHEAD_SECONDS = 0.25
"""How long a read-ahead message waits at most for its consumer (less for short leases)."""
STREAM_READ_AHEAD = 8
"""How many SSE and WebSocket consumers read ahead at most (their `prefetch` if larger)."""


@dataclass(eq=False)
class Delivery:
    """One leased message; settle it with `ack`, `nack` or keep it with `extend`."""

    consumer: Consumer
    message: Message
    delivered: bool = False
    """Whether it reached its consumer; one that never did goes back without using an attempt."""
    handed_at: float = 0.0
    """When the iterator handed it out (`time.monotonic`, a cheaper clock to read than
    the event loop's)."""
    held_until: float = 0.0
    """Read ahead: when it goes back if it has not been handed out by then."""

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

    def settling(self, retry: Retry | None = None) -> Settle:
        """This delivery's ack (no `retry`) or nack, on its way to `Queues.settle`.

        The client has let go of the message, so its consumer may claim the next one while
        the settlement commits; until then the message stays in `in_flight` (leaving still
        gives it back). Call `not_settled` if the settlement fails.
        """
        self.consumer.letting_go(self.lease)
        return Settle(self.message.queue, self.id, self.lease, retry)

    def not_settled(self) -> None:
        """The settlement failed: the message takes up room again until it is settled."""
        self.consumer.settling.discard(self.lease)

    async def extend(self, seconds: float) -> datetime:
        return await self.consumer.queues.extend(self.message.queue, self.id, self.lease, seconds)


@dataclass(eq=False)
class Consumer:
    """Claims messages while it has room; waits on wake-ups (and a slow poll) otherwise.

    Every claimed message is in `in_flight` from the moment the claim returns, so leaving
    gives back each one: those that reached the consumer as a disconnect, the others as if
    never claimed. With `marks_delivered` the caller sets `Delivery.delivered` itself when
    the message actually leaves (a transport that may be cancelled before it writes);
    otherwise handing it out of the iterator counts. Kept (read-ahead) messages are in
    `in_flight` too, never delivered until handed out.
    """

    queues: Queues
    queue: str
    prefetch: int = 1
    lease_seconds: float = 30.0
    marks_delivered: bool = False
    in_flight: dict[str, Delivery] = field(default_factory=dict)
    settling: set[str] = field(default_factory=set)
    """Leases in `in_flight` whose settlement is committing: they leave room for the next."""
    _freed: anyio.Event | None = None

    read_ahead: int = 0
    """How many at most to keep claimed beyond what the client may hold (in `ahead`)."""
    ahead: deque[Delivery] = field(default_factory=deque)
    """Claimed (and in `in_flight`) but not handed out yet, oldest first."""
    _held_for: float = inf
    """How long the client held the last message it settled (inf: not known yet, or
    held messages had to go back): how many it takes within `ahead_seconds`."""

    def settled(self, lease: str) -> None:
        self.queues.holders.pop(lease, None)
        let_go = lease in self.settling
        self.settling.discard(lease)
        delivery = self.in_flight.pop(lease, None)
        if delivery is not None:
            if not let_go:
                self._note_pace(delivery)
            self._wake()

    def letting_go(self, lease: str) -> None:
        delivery = self.in_flight.get(lease)
        if delivery is not None and lease not in self.settling:
            self.settling.add(lease)
            self._note_pace(delivery)
            self._wake()

    def _note_pace(self, delivery: Delivery) -> None:
        if self.read_ahead and delivery.handed_at:
            self._held_for = monotonic() - delivery.handed_at

    def _ahead_target(self) -> int:
        """As many as the client is expected to take in half the holding time, at most
        `read_ahead`; none before its pace is known or once it fell behind."""
        if not self.read_ahead or self._held_for == inf:
            return 0
        takes = self.prefetch * self.ahead_seconds / 2 / max(self._held_for, 1e-6)
        return min(self.read_ahead, int(takes))

    def _wake(self) -> None:
        """Room came back: only this consumer cares (an ack makes nothing claimable)."""
        if self._freed is not None:
            self._freed.set()

    @property
    def ahead_seconds(self) -> float:
        return min(AHEAD_SECONDS, self.lease_seconds / 10)

    @property
    def room(self) -> int:
        """How many more messages the client may get: prefetch less those it holds."""
        return self.prefetch - len(self.in_flight) + len(self.settling) + len(self.ahead)

    async def deliveries(self) -> AsyncGenerator[Delivery, None]:
        """A full consumer reads ahead, if it may, then waits for its own room to come
        back; one with room waits for the queue's wake-ups (enqueues, nacks, returns)."""
        quiet = False
        while True:
            room = self.room
            if room > 0 and self.ahead:
                for delivery in self._hand_out(room):
                    if not self.marks_delivered:
                        delivery.delivered = True
                    yield delivery
                continue
            if room <= 0 and quiet:
                # Settles in this process free room at once (`Queues.holders`); only after
                # a quiet poll ask the database about the rest (another process, reaped).
                await self._forget_settled_elsewhere()
                room = self.room
            if room > 0:
                if self._take_kept(room):
                    continue
                woken = self.queues.waker.event(self.queue)
                limit = room + self._ahead_wanted()
                claimed = await self.queues.claim(self.queue, limit, self.lease_seconds)
                self._hold([self._track(message) for message in claimed], room)
            else:
                woken = self._freed = anyio.Event()
                claimed = await self._claim_ahead()
            if claimed:
                continue
            with anyio.move_on_after(await self._idle_wait(room, woken)) as waited:
                await woken.wait()
            quiet = waited.cancelled_caught
            if self.ahead and monotonic() >= self.ahead[0].held_until:
                quiet = False
                self._held_for = inf
                await self._give_back_ahead()

    def _hand_out(self, room: int) -> list[Delivery]:
        now = monotonic()
        batch = [self.ahead.popleft() for _ in range(min(room, len(self.ahead)))]
        for delivery in batch:
            delivery.handed_at = now
        self._note_kept()
        return batch

    def _hold(self, batch: list[Delivery], room: int) -> None:
        """Keep a claim's messages until handed out; those beyond the client's `room`
        wake this queue's idle consumers here, which may take them (`_take_kept`)."""
        until = monotonic() + self.ahead_seconds
        for delivery in batch:
            delivery.held_until = until
        self.ahead.extend(batch)
        if len(batch) > room:
            self._note_kept()
            self.queues.waker.wake(self.queue)

    def _take_kept(self, room: int) -> bool:
        """A consumer with room and nothing kept first takes what other consumers of its
        queue here keep (with the same lease length), newest first, as each keeper hands
        out its oldest next: no message waits on a busy consumer while this one idles."""
        keepers = self.queues.keeping.get(self.queue)
        if not keepers:
            return False
        for other in list(keepers):
            if other is self or other.lease_seconds != self.lease_seconds:
                continue
            while room > len(self.ahead) and other.ahead:
                delivery = other.ahead.pop()
                del other.in_flight[delivery.lease]
                delivery.consumer = self
                self.in_flight[delivery.lease] = delivery
                self.queues.holders[delivery.lease] = self.settled
                self.ahead.appendleft(delivery)
            other._note_kept()
        self._note_kept()
        return bool(self.ahead)

    def _note_kept(self) -> None:
        """List this consumer among its queue's keepers while it keeps any message."""
        keeping = self.queues.keeping
        if self.ahead:
            keeping.setdefault(self.queue, set()).add(self)
            return
        keepers = keeping.get(self.queue)
        if keepers is not None and self in keepers:
            keepers.discard(self)
            if not keepers:
                del keeping[self.queue]

    def _ahead_wanted(self) -> int:
        """How many more to hold: none until half of those held are gone, then enough for
        the target again, so they come in few claims."""
        target = self._ahead_target()
        if len(self.ahead) * 2 > target:
            return 0
        return target - len(self.ahead)

    async def _claim_ahead(self) -> list[Message]:
        """While the client is full and keeps pace, claim the next ones for it now."""
        wanted = self._ahead_wanted()
        if not wanted:
            return []
        claimed = await self.queues.claim(self.queue, wanted, self.lease_seconds)
        self._hold([self._track(message) for message in claimed], 0)
        return claimed

    async def _give_back_ahead(self) -> None:
        """The client kept its room too long: the held messages go back, attempt unused.
        They leave `ahead` first, so no other consumer takes one on its way back."""
        leases = [delivery.lease for delivery in self.ahead]
        self.ahead.clear()
        self._note_kept()
        await self.queues.give_back(leases)
        for lease in leases:
            self.in_flight.pop(lease, None)
            self.queues.holders.pop(lease, None)

    def _track(self, message: Message) -> Delivery:
        delivery = Delivery(self, message)
        self.in_flight[delivery.lease] = delivery
        self.queues.holders[delivery.lease] = self.settled
        return delivery

    async def _idle_wait(self, room: int, woken: anyio.Event) -> float:
        """Sleep until woken, the next delayed message is due, the safety poll, or the
        time a held message goes back."""
        if room <= 0:
            longest = self.queues.poll_interval
            if self.ahead:
                longest = min(longest, max(0.0, self.ahead[0].held_until - monotonic()))
            return longest
        return await due_wait(self.queues, self.queue, self.queues.poll_interval, woken)

    async def _forget_settled_elsewhere(self) -> None:
        """Messages settled in another process, or reaped after their lease, free room too."""
        held = await self.queues.still_leased(list(self.in_flight))
        for lease in [lease for lease in self.in_flight if lease not in held]:
            del self.in_flight[lease]
            self.settling.discard(lease)
            self.queues.holders.pop(lease, None)
        self.ahead = deque(d for d in self.ahead if d.lease in self.in_flight)
        self._note_kept()

    async def release_all(self) -> None:
        held, self.in_flight = list(self.in_flight.values()), {}
        self.settling.clear()
        self.ahead.clear()
        self._note_kept()
        for delivery in held:
            self.queues.holders.pop(delivery.lease, None)
        with anyio.move_on_after(CLEANUP_SECONDS, shield=True):
            await self.queues.release(
                [d.lease for d in held if d.delivered], [d.lease for d in held if not d.delivered]
            )


async def due_wait(queues: Queues, queue: str, longest: float, woken: anyio.Event) -> float:
    """How long to sleep at most: until the next delayed message is due, or `longest`.
    `woken` is the wake-up the caller waits for (callers woken together ask once)."""
    due = await queues.next_available(queue, woken)
    if due is not None:
        return min(longest, max(0.0, (due - datetime.now(UTC)).total_seconds()) + 0.01)
    return longest


async def claim_within(
    queues: Queues, queue: str, limit: int, lease: float, wait: float
) -> list[Message]:
    """One claim of up to `limit` messages, waiting up to `wait` seconds for the first.

    Wakes on enqueues and settles, and when a delayed message becomes due. Only the sleeps
    are under the deadline, never a claim, so the deadline cannot strand one.
    """
    deadline = anyio.current_time() + wait
    while True:
        woken = queues.waker.event(queue)
        claimed = await queues.claim(queue, limit, lease)
        left = deadline - anyio.current_time()
        if claimed or left <= 0:
            return claimed
        longest = min(left, queues.poll_interval)
        with anyio.move_on_after(await due_wait(queues, queue, longest, woken)):
            await woken.wait()


@asynccontextmanager
async def consume(
    queues: Queues,
    queue: str,
    *,
    prefetch: int = 1,
    lease: float = 30.0,
    marks_delivered: bool = False,
    read_ahead: int = 0,
) -> AsyncIterator[AsyncIterator[Delivery]]:
    """`async with consume(queues, "jobs", prefetch=4) as deliveries: async for d in deliveries`."""
    consumer = Consumer(
        queues,
        validate_queue(queue),
        integer(prefetch, "prefetch", 1, 1000),
        number(lease, "lease", 0.1, MAX_LEASE_SECONDS),
        marks_delivered,
        read_ahead=integer(read_ahead, "read_ahead", 0, 1000),
    )
    try:
        async with aclosing(consumer.deliveries()) as deliveries:
            yield deliveries
    finally:
        await consumer.release_all()
