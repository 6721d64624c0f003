"""Point-to-point queues: each message to exactly one consumer at a time.

Claims use `FOR UPDATE SKIP LOCKED` and hand out a lease token per delivery; ack, nack and
extend are fenced on that token, so a late ack from a consumer that lost its lease (the
message was redelivered) is refused, never applied twice. Expired leases are reaped back
to the queue with exponential backoff; after `max_attempts` a message is dead-lettered.
Retries, dead-letters and requeues are also published as events on `pgcast.queues.<name>`
in the same transaction as the state change (a message given back because its consumer
left publishes nothing unless it is dead-lettered).

Wake-ups: enqueues and other settles in this process wake local consumers directly and,
coalesced, send one NOTIFY per queue to other processes (outside any data transaction);
an ack makes nothing claimable, so it only wakes the consumer that held the lease (a
NOTIFY only when that consumer is in another process). Idle consumers wait on those
wake-ups with a slow safety poll; they never busy-poll.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from typing import TYPE_CHECKING, Any
from uuid import uuid4

import anyio
import orjson

from backend.connectors.database import Connection, Pool
from backend.connectors.outage import report_failure
from backend.connectors.store import log as log_queries
from backend.connectors.store import queues as q
from backend.connectors.store.idempotency import run_once
from backend.core import exactjson
from backend.core.errors import (
    Conflict,
    EventTooLarge,
    InvalidEvent,
    InvalidQueueName,
    NotFound,
    PgcastError,
)
from backend.core.names import validate_name
from backend.entities.event import NewEvent, format_time
from backend.entities.message import Message, NewMessage, QueueStats
from backend.services.claiming import ClaimBatcher
from backend.services.settle import Retry, Settle, SettleBatcher, Settled

if TYPE_CHECKING:
    from backend.services.consume import Consumer

logger = logging.getLogger(__name__)

QUEUES_CHANNEL = "pgcast_queues"
LIFECYCLE_PREFIX = "pgcast.queues."
MAX_QUEUE_NAME = 200 - len(LIFECYCLE_PREFIX)
MAX_ATTEMPTS_LIMIT = 1000
MAX_DELAY_SECONDS = 365 * 24 * 3600.0
MAX_LEASE_SECONDS = 24 * 3600.0
REAP_BATCH = 1000
CLEANUP_SECONDS = 5.0


def new_message(
    queue: object,
    data: Any,
    *,
    key: object = None,
    delay_seconds: object = 0,
    max_attempts: object = 5,
    max_bytes: int,
) -> NewMessage:
    """Validate one message; raises typed errors naming the problem."""
    name = validate_queue(queue)
    try:
        data_json = exactjson.dumps(data)
    except TypeError as exc:
        raise InvalidEvent(f"message data is not JSON: {exc}") from None
    if exactjson.contains_nul(data_json):
        exactjson.refuse_nul(data, "data")
    if len(data_json) > max_bytes:
        raise EventTooLarge(
            f"message data is {len(data_json)} bytes, over the limit of {max_bytes} bytes"
        )
    if key is not None and (
        not isinstance(key, str) or not 1 <= len(key) <= 1024 or not key.isprintable()
    ):
        raise InvalidEvent("message key must be 1-1024 printable characters or null")
    delay = number(delay_seconds, "delay_seconds", 0, MAX_DELAY_SECONDS)
    attempts = integer(max_attempts, "max_attempts", 1, MAX_ATTEMPTS_LIMIT)
    return NewMessage(name, data_json, key, delay, attempts)


def validate_queue(queue: object) -> str:
    """Queue names follow the topic rules, short enough for `pgcast.queues.<name>`. Names
    that passed are remembered: every message of a batch names its queue again."""
    if isinstance(queue, str):
        return _valid_queue_name(queue)
    return _check_queue(queue)


def _check_queue(queue: object) -> str:
    name = validate_name(queue, "queue")
    if len(name) > MAX_QUEUE_NAME:
        raise InvalidQueueName(f"queue {name[:40]!r}...: longer than {MAX_QUEUE_NAME} characters")
    return name


_valid_queue_name = lru_cache(maxsize=1024)(_check_queue)


def number(value: object, name: str, low: float, high: float) -> float:
    if isinstance(value, Decimal):  # a number a double cannot hold exactly
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise InvalidEvent(f"{name} must be a number between {low:g} and {high:g}")
    return float(value)


def integer(value: object, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidEvent(f"{name} must be an integer between {low} and {high}")
    return value


def parse_message_id(value: object) -> int:
    text = str(value)
    if not (text.isascii() and text.isdigit() and len(text) <= 18):
        raise NotFound(f"no message {text!r}: message ids are decimal numbers")
    return int(text)


@dataclass(eq=False)
class QueueWaker:
    """Per-queue wake-up events; a waiter takes the event first, then checks, then waits."""

    _events: dict[str, anyio.Event] = field(default_factory=dict)

    def event(self, queue: str) -> anyio.Event:
        event = self._events.get(queue)
        if event is None or event.is_set():
            event = self._events[queue] = anyio.Event()
        return event

    def wake(self, queue: str) -> None:
        event = self._events.pop(queue, None)
        if event is not None:
            event.set()


@dataclass(eq=False)
class _Asking:
    """One `next_available` query that consumers woken together wait for."""

    due: datetime | None = None
    known: bool = False
    done: anyio.Event = field(default_factory=anyio.Event)


@dataclass(eq=False)
class Queues:
    """The queue service of one process."""

    pool: Pool
    on_events: Callable[[], None]
    max_bytes: int = 1024 * 1024
    backoff_base: float = 1.0
    backoff_cap: float = 300.0
    reap_interval: float = 1.0
    poll_interval: float = 2.0
    retention: timedelta = timedelta(days=7)
    waker: QueueWaker = field(default_factory=QueueWaker)
    holders: dict[str, Callable[[str], None]] = field(default_factory=dict)
    """Leases held by this process's consumers, and what to call when one is settled, by
    whichever connection: the consumer gets its room back without asking the database."""
    keeping: dict[str, set[Consumer]] = field(default_factory=dict)
    """By queue, this process's consumers that keep read-ahead messages, which an idle
    consumer of the queue may take over."""
    settlements: SettleBatcher = field(init=False)
    claims: ClaimBatcher = field(init=False)
    _pending_notify: set[str] = field(default_factory=set)
    _asking: dict[anyio.Event, _Asking] = field(default_factory=dict)
    _notify_wake: anyio.Event = field(default_factory=anyio.Event)

    def __post_init__(self) -> None:
        self.settlements = SettleBatcher(self._commit_settles)
        self.claims = ClaimBatcher(self._claim_now, self.give_back)

    @property
    def backoff(self) -> tuple[float, float]:
        return self.backoff_base, self.backoff_cap

    def message(
        self,
        queue: object,
        data: Any,
        *,
        key: object = None,
        delay_seconds: object = 0,
        max_attempts: object = 5,
    ) -> NewMessage:
        """Validate one message against this process's limits."""
        return new_message(
            queue,
            data,
            key=key,
            delay_seconds=delay_seconds,
            max_attempts=max_attempts,
            max_bytes=self.max_bytes,
        )

    def changed(self, queue: str) -> None:
        """Local consumers now; other processes through one coalesced NOTIFY."""
        self.waker.wake(queue)
        self._pending_notify.add(queue)
        self._notify_wake.set()

    async def enqueue(self, messages: Sequence[NewMessage]) -> list[Message]:
        """All or none: one INSERT statement, which commits on its own (one round trip)."""
        async with self._conn() as conn:
            stored = await q.insert_messages(conn, messages)
        for queue in {m.queue for m in stored}:
            self.changed(queue)
        return stored

    async def enqueue_once(
        self, queue: str, key: str, digest: bytes, messages: Sequence[NewMessage]
    ) -> tuple[list[Message], bool]:
        async def store(conn: Connection) -> list[int]:
            return [m.id for m in await q.insert_messages(conn, messages)]

        ids, replayed = await run_once(self.pool, f"queue:{queue}", key, digest, store)
        async with self.pool.acquire() as conn:
            stored = await q.messages_by_id(conn, ids)
        if not replayed:
            self.changed(queue)
        # A replay reports the messages as stored, never a consumer's current lease.
        return [replace(m, lease=None, lease_until=None) for m in stored], replayed

    async def claim(self, queue: str, limit: int, lease_seconds: float) -> list[Message]:
        """Lease up to `limit` messages; the caller gets them all, or the queue gets them back.

        Claims of one queue made at the same time share one statement (`ClaimBatcher`),
        which runs shielded: a cancellation cannot leave it committed with its answer lost.
        """
        return await self.claims.claim(queue, limit, lease_seconds)

    async def _claim_now(self, queue: str, limit: int, lease_seconds: float) -> list[Message]:
        base = f"{uuid4()}."
        try:
            async with self._conn() as conn:
                return await q.claim(conn, queue, lease_seconds, base, limit)
        except BaseException:
            # Whether or not the claim committed, its messages carry only these tokens:
            # giving all of them back also covers a commit whose answer was lost.
            await self.give_back(q.lease_tokens(base, limit))
            raise

    async def next_available(self, queue: str, woken: anyio.Event | None = None) -> datetime | None:
        """When the queue's next ready message is due (None: none is ready or delayed).

        Idle consumers of a queue woken by the same wake-up (the same `woken`) share one
        query: a change made after that query started wakes them all again anyway.
        """
        if woken is None or woken.is_set():
            return await self._next_available(queue)
        asking = self._asking.get(woken)
        if asking is None:
            asking = self._asking[woken] = _Asking()
            try:
                asking.due = await self._next_available(queue)
                asking.known = True
            finally:
                del self._asking[woken]
                asking.done.set()
        else:
            await asking.done.wait()
            if not asking.known:  # the query failed: ask again
                return await self._next_available(queue)
        return asking.due

    async def _next_available(self, queue: str) -> datetime | None:
        async with self._conn() as conn:
            return await q.next_available(conn, queue)

    async def ack(self, queue: str, message_id: int, lease: str) -> None:
        """Fenced on the lease; shares a commit with other settlements (`settle`)."""
        (outcome,) = await self.settle([Settle(queue, message_id, lease)])
        if isinstance(outcome, PgcastError):
            raise outcome

    async def nack(
        self,
        queue: str,
        message_id: int,
        lease: str,
        *,
        delay: float | None = None,
        error: str | None = None,
    ) -> q.Moved:
        """Fenced on the lease; shares a commit with other settlements (`settle`)."""
        (outcome,) = await self.settle([Settle(queue, message_id, lease, Retry(delay, error))])
        if isinstance(outcome, PgcastError):
            raise outcome
        assert outcome is not None
        return outcome

    async def settle(self, settles: Sequence[Settle]) -> list[q.Moved | PgcastError | None]:
        """Acks and nacks in one commit shared with other callers (`SettleBatcher`).

        Returns each one's outcome in order: None for an ack, the move for a nack, or the
        error refusing one whose lease was not held (NotFound, Conflict). Who is woken by
        it is settled with the commit (`_announce`).
        """
        settled = await self.settlements.settle(settles)
        outcomes = [settled.outcome(settle) for settle in settles]
        return [
            await self._refusal(settle.queue, settle.message_id)
            if outcome is False
            else (None if outcome is True else outcome)
            for settle, outcome in zip(settles, outcomes, strict=True)
        ]

    async def _commit_settles(self, settles: Sequence[Settle]) -> Settled:
        acks = [(s.queue, s.message_id, s.lease) for s in settles if s.retry is None]
        nacks = [
            (s.queue, s.message_id, s.lease, s.retry.delay, s.retry.error)
            for s in settles
            if s.retry is not None
        ]
        async with self._conn() as conn:
            if not nacks:  # one statement commits on its own
                settled = Settled(frozenset(await q.ack_many(conn, acks)))
            else:
                async with conn.transaction():
                    acked = await q.ack_many(conn, acks) if acks else set()
                    nacked = await q.nack_many(conn, nacks, self.backoff)
                    await self._lifecycle(conn, list(nacked.values()))
                await self._sequence(conn)
                settled = Settled(frozenset(acked), nacked)
        self._announce(settles, settled)
        return settled

    def _announce(self, settles: Sequence[Settle], settled: Settled) -> None:
        """Right after the commit, still under its shield, so a caller cancelled meanwhile
        loses none of it: the consumers holding the leases get their room back, and a
        nack wakes its queue (an ack makes nothing claimable, so it wakes only the holder:
        here directly, in another process through a NOTIFY)."""
        for settle in settles:
            if settled.outcome(settle) is not False:
                here = self._settled(settle.lease)
                if settle.retry is not None or not here:
                    self.changed(settle.queue)

    def _settled(self, lease: str) -> bool:
        """Tell this process's consumer holding `lease`, if any; True if there was one."""
        holder = self.holders.pop(lease, None)
        if holder is not None:
            holder(lease)
        return holder is not None

    async def extend(self, queue: str, message_id: int, lease: str, seconds: float) -> datetime:
        async with self._conn() as conn:
            until = await q.extend(conn, queue, message_id, lease, seconds)
            if until is None:
                raise await self._refusal_on(conn, queue, message_id)
            return until

    async def release(self, delivered: Sequence[str], undelivered: Sequence[str] = ()) -> None:
        """Give leased messages back now (their consumer is gone): `delivered` ones as a
        disconnect (the attempt counts), `undelivered` ones as if never claimed."""
        if not delivered and not undelivered:
            return
        moved: list[q.Moved] = []
        queues: list[str] = []
        async with self._conn() as conn:
            async with conn.transaction():
                if delivered:
                    moved = await q.release(conn, delivered)
                if undelivered:
                    queues = await q.give_back(conn, undelivered)
                dead = [m for m in moved if m.state == "dead"]
                await self._lifecycle(conn, dead)
            if dead:  # only dead letters publish lifecycle events here
                await self._sequence(conn)
        for queue in {m.message.queue for m in moved} | set(queues):
            self.changed(queue)

    async def give_back(self, leases: Sequence[str]) -> None:
        """Undo a claim whose messages reached no one; shielded, as it runs on the way out."""
        with anyio.move_on_after(CLEANUP_SECONDS, shield=True) as scope:
            try:
                await self.release((), leases)
            except Exception as exc:  # noqa: BLE001 - the leases expire and are reaped instead
                logger.warning(
                    "could not give back an unseen claim: %r", exc, extra={"action": "give_back"}
                )
        if scope.cancelled_caught:
            logger.warning("giving back an unseen claim timed out", extra={"action": "give_back"})

    async def still_leased(self, leases: Sequence[str]) -> set[str]:
        async with self._conn() as conn:
            return await q.still_leased(conn, leases)

    async def requeue(self, queue: str, message_id: int | None) -> list[Message]:
        async with self._conn() as conn:
            async with conn.transaction():
                moved = await q.requeue(conn, queue, message_id)
                if message_id is not None and not moved:
                    state = await q.state_of(conn, queue, message_id)
                    if state is None:
                        raise NotFound(f"no message {message_id} in queue {queue!r}")
                    raise Conflict(f"message {message_id} is not dead-lettered (it is {state})")
                await self._lifecycle(conn, moved, requeued=True)
            await self._sequence(conn)
        if moved:
            self.changed(queue)
        return [m.message for m in moved]

    async def dead(self, queue: str, after_id: int = 0, limit: int = 100) -> list[Message]:
        async with self._conn() as conn:
            return await q.dead(conn, queue, after_id, limit)

    async def stats(self, queue: str | None = None) -> list[QueueStats]:
        """Figures per queue; a named queue with nothing pending reports zeros."""
        async with self._conn() as conn:
            found = await q.stats(conn, queue)
        if queue is not None and not found:
            return [QueueStats(queue, 0, 0, 0, 0, None)]
        return found

    async def reap_once(self) -> int:
        async with self._conn() as conn:
            async with conn.transaction():
                moved = await q.reap_expired(conn, self.backoff, REAP_BATCH)
                await self._lifecycle(conn, moved)
            if moved:
                await self._sequence(conn)
        for queue in {m.message.queue for m in moved}:
            self.changed(queue)
        return len(moved)

    async def run(self) -> None:
        """Reap expired leases, prune old acked messages and send coalesced wake-ups."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._reap_loop)
            tg.start_soon(self._notify_loop)

    async def _reap_loop(self) -> None:
        last_prune = 0.0
        while True:
            try:
                await self.reap_once()
                if anyio.current_time() - last_prune > 60:
                    async with self.pool.acquire() as conn:
                        await q.prune_acked(conn, datetime.now(UTC) - self.retention, 5000)
                    last_prune = anyio.current_time()
            except Exception as exc:  # noqa: BLE001 - the next round retries
                report_failure(logger, "queue reaper", exc, action="reap_failed")
            await anyio.sleep(self.reap_interval)

    async def _notify_loop(self) -> None:
        while True:
            await self._notify_wake.wait()
            self._notify_wake = anyio.Event()
            queues, self._pending_notify = sorted(self._pending_notify), set()
            try:
                async with self.pool.acquire() as conn:
                    await q.notify(conn, QUEUES_CHANNEL, queues)
            except Exception as exc:  # noqa: BLE001 - wake-ups are hints; the safety poll covers
                report_failure(logger, "queue wake-up", exc, action="notify_failed")
            await anyio.sleep(0.005)

    async def _refusal(self, queue: str, message_id: int) -> PgcastError:
        async with self._conn() as conn:
            return await self._refusal_on(conn, queue, message_id)

    async def _refusal_on(self, conn: Connection, queue: str, message_id: int) -> PgcastError:
        """Why a fenced change found no message held with the lease: NotFound or Conflict."""
        state = await q.state_of(conn, queue, message_id)
        if state is None:
            return NotFound(f"no message {message_id} in queue {queue!r}")
        return Conflict(
            f"message {message_id} is not held with this lease (it is {state} now:"
            " already settled, or its lease expired and it was given to another consumer)"
        )

    async def _lifecycle(
        self, conn: Connection, moved: Sequence[q.Moved], *, requeued: bool = False
    ) -> None:
        """Publish retried / dead_lettered / requeued events in the same transaction."""
        if not moved:
            return
        events = []
        for change in moved:
            m = change.message
            kind = (
                "requeued"
                if requeued
                else ("dead_lettered" if change.state == "dead" else "retried")
            )
            payload = {
                "id": str(m.id),
                "attempt": m.attempt,
                "max_attempts": m.max_attempts,
                "error": m.last_error,
                "available_at": format_time(m.available_at),
            }
            events.append(
                NewEvent(LIFECYCLE_PREFIX + m.queue, orjson.dumps(payload), kind, str(m.id))
            )
        await log_queries.insert_events(conn, events)

    async def _sequence(self, conn: Connection) -> None:
        if await log_queries.sequence_pending(conn):
            self.on_events()

    def _conn(self) -> AbstractAsyncContextManager[Connection]:
        return self.pool.acquire(stateless=True)
