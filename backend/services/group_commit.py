"""Group commit: concurrent publish requests in one process share one transaction.

Requests wait in a bounded queue (overload pushes back on callers); each worker takes a
batch from its head and commits it in one transaction. While publishers are busy (a
commit in flight, or a batch of several requests moments ago) a batch waits until
`max_wait` (default 2 ms) after its first request arrived, or until `max_requests` are
queued; after a quiet spell it leaves at once, so a lone publish pays no wait.
The queue is a plain deque that workers drain themselves: a request costs one append and
one wake-up, with no task in between that forwards it.
Every caller is answered only after its own events are committed. When the database
refuses an event of a batch (InvalidEvent: nothing was stored), each request is retried
alone, so one bad request fails only itself; any other failure goes to every caller of
the batch, since a retry after an unseen commit could store its events twice. When the
committer stops, every request it has not committed (still queued, or arriving later) is
answered with ShuttingDown: nobody waits for an answer that cannot come. Commits use the
pool's live reserve, so subscribers catching up cannot hold back publishing.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import anyio
import anyio.lowlevel

from backend.connectors.database import Pool
from backend.core.errors import DatabaseUnavailable, InvalidEvent, ShuttingDown
from backend.entities.event import Event, NewEvent
from backend.services.publish import HandOver, publish_events

logger = logging.getLogger(__name__)

# After a batch of several requests, publishers count as busy for this many `max_wait`s.
BUSY_WINDOW_WAITS = 5


@dataclass(eq=False, slots=True)
class _Request:
    """One caller's events and its answer. The caller waits on a bare asyncio future (the
    engine runs on asyncio; asyncpg needs it): an anyio Event costs a look-up of the
    running library on every request, which showed up in profiles."""

    events: Sequence[NewEvent]
    arrived: float
    answered: asyncio.Future[None]
    result: list[Event] | None = None
    error: Exception | None = None

    @property
    def settled(self) -> bool:
        return self.result is not None or self.error is not None

    def settle(self, result: list[Event] | None, error: Exception | None) -> None:
        self.result, self.error = result, error
        if not self.answered.done():  # a caller that was cancelled no longer listens
            self.answered.set_result(None)


@dataclass
class GroupCommitStats:
    batches: int = 0
    events: int = 0


@dataclass(eq=False)
class GroupCommitter:
    pool: Pool
    recipient: HandOver
    """Gets each batch's events, positioned (the hub)."""
    max_requests: int = 256
    max_wait: float = 0.002
    workers: int = 2
    queue_size: int = 10000
    commit_timeout: float = 30.0
    on_batch: Callable[[int], None] | None = None
    stats: GroupCommitStats = field(default_factory=GroupCommitStats)
    _queue: deque[_Request] = field(default_factory=deque, init=False)
    # Set when a request is queued, when `max_requests` are queued, and when a batch left
    # the queue; each is replaced by a fresh one before anyone waits on it again.
    _arrived: anyio.Event = field(default_factory=anyio.Event, init=False)
    _full: anyio.Event = field(default_factory=anyio.Event, init=False)
    _room: anyio.Event = field(default_factory=anyio.Event, init=False)
    _stopped: bool = field(default=False, init=False)
    _in_flight: int = field(default=0, init=False)
    _busy_until: float = field(default=-math.inf, init=False)

    async def publish(self, events: Sequence[NewEvent]) -> list[Event]:
        """Commit `events` (atomically, in order) with whatever else is being published now."""
        if not events:
            return []
        while len(self._queue) >= self.queue_size and not self._stopped:
            if self._room.is_set():
                self._room = anyio.Event()
            await self._room.wait()
        if self._stopped:
            raise _stopped()
        loop = asyncio.get_running_loop()
        request = _Request(events, loop.time(), loop.create_future())
        queue = self._queue
        queue.append(request)
        self._arrived.set()
        if len(queue) >= self.max_requests:
            self._full.set()
        await request.answered
        if request.error is not None:
            raise request.error
        assert request.result is not None
        return request.result

    async def run(self) -> None:
        """Run the batching workers until cancelled; then answer whoever is still waiting."""
        try:
            async with anyio.create_task_group() as tg:
                for _ in range(self.workers):
                    tg.start_soon(self._worker)
        finally:
            # Workers finish the batch they hold (shielded, bounded) before this runs, so
            # a request still queued now was never part of a commit.
            self._stopped = True
            self._fail(list(self._queue), _stopped())
            self._queue.clear()
            self._room.set()

    async def _worker(self) -> None:
        while True:
            # A stopping committer takes no new batch, even when one is ready at once.
            await anyio.lowlevel.checkpoint_if_cancelled()
            group = await self._next_batch()
            # Once taken, a batch is finished even if the process is stopping, within a bound.
            if len(group) > 1:
                self._busy_until = anyio.current_time() + BUSY_WINDOW_WAITS * self.max_wait
            self._in_flight += 1
            try:
                with anyio.move_on_after(self.commit_timeout, shield=True):
                    await self._commit(group)
            finally:
                self._in_flight -= 1
            self._fail(
                [r for r in group if not r.settled],
                DatabaseUnavailable(
                    "the database did not answer in time; nothing was acknowledged"
                ),
            )

    async def _next_batch(self) -> list[_Request]:
        """Up to `max_requests` from the head of the queue, once the batch may leave."""
        queue = self._queue
        while True:
            while not queue:
                if self._arrived.is_set():
                    self._arrived = anyio.Event()
                await self._arrived.wait()
            if len(queue) < self.max_requests and self._busy():
                deadline = queue[0].arrived + self.max_wait
                if anyio.current_time() < deadline:
                    if self._full.is_set():
                        self._full = anyio.Event()
                    with anyio.CancelScope(deadline=deadline):
                        await self._full.wait()
            # Another worker may have taken the batch while this one waited with it.
            if queue:
                group = [queue.popleft() for _ in range(min(len(queue), self.max_requests))]
                self._room.set()
                return group

    def _busy(self) -> bool:
        """Worth waiting for company: a commit is in flight, or the last batch, just now,
        had several requests. A single client publishing one request after another is
        neither, so it pays no wait."""
        return self._in_flight > 0 or anyio.current_time() < self._busy_until

    async def _commit(self, batch: list[_Request]) -> None:
        try:
            published = await publish_events(
                self.pool,
                [event for request in batch for event in request.events],
                recipient=self.recipient,
                live=True,
            )
        except InvalidEvent as exc:
            # Refused before anything was stored: retry one by one, so only the bad request
            # fails. Any other error may come after the commit, where a retry would store
            # the events twice.
            if len(batch) == 1:
                self._fail(batch, exc)
                return
            for request in batch:
                await self._commit([request])
            return
        except Exception as exc:  # noqa: BLE001 - every caller in the batch gets it
            self._fail(batch, exc)
            return
        self.stats.batches += 1
        self.stats.events += len(published)
        if self.on_batch is not None:
            self.on_batch(len(published))
        start = 0
        for request in batch:
            request.settle(published[start : start + len(request.events)], None)
            start += len(request.events)

    @staticmethod
    def _fail(batch: list[_Request], error: Exception) -> None:
        for request in batch:
            request.settle(None, error)


def _stopped() -> ShuttingDown:
    return ShuttingDown("the server is stopping: nothing was published; retry")
