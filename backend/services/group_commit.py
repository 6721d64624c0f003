"""Group commit: concurrent publish requests in one process share one transaction.

Requests queue up (bounded, so overload pushes back on callers); each worker batches them
with the `batch` stream operator and commits each batch in one transaction. While publishers
are busy (a commit in flight, or a batch of several requests moments ago) a batch gathers
whatever arrives within `max_wait` (default 2 ms, up to `max_requests`); after a quiet
spell it leaves at once, so a lone publish pays no wait.
Every caller is answered only after its own events are committed. When a batch fails
for a reason other than the database being unreachable, each request is retried alone,
so one bad request fails only itself. When the committer stops, every request it has not
committed (still buffered, or never taken) is answered with ShuttingDown: nobody waits for
an answer that cannot come. Commits use the pool's live reserve, so subscribers catching
up cannot hold back publishing.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from backend.connectors.database import Pool
from backend.core.errors import DatabaseUnavailable, InvalidEvent, ShuttingDown
from backend.core.streams import batch
from backend.entities.event import Event, NewEvent
from backend.services.publish import publish_events

logger = logging.getLogger(__name__)

# After a batch of several requests, publishers count as busy for this many `max_wait`s.
BUSY_WINDOW_WAITS = 5


@dataclass(eq=False)
class _Request:
    events: Sequence[NewEvent]
    done: anyio.Event = field(default_factory=anyio.Event)
    result: list[Event] | None = None
    error: Exception | None = None


@dataclass
class GroupCommitStats:
    batches: int = 0
    events: int = 0


@dataclass(eq=False)
class GroupCommitter:
    pool: Pool
    on_sequenced: Callable[[int], None]
    max_requests: int = 256
    max_wait: float = 0.002
    workers: int = 2
    queue_size: int = 10000
    commit_timeout: float = 30.0
    on_batch: Callable[[int], None] | None = None
    stats: GroupCommitStats = field(default_factory=GroupCommitStats)
    _send: MemoryObjectSendStream[_Request] = field(init=False)
    _receive: MemoryObjectReceiveStream[_Request] = field(init=False)
    _in_flight: int = field(default=0, init=False)
    _busy_until: float = field(default=-math.inf, init=False)
    _waiting: set[_Request] = field(default_factory=set, init=False)

    def __post_init__(self) -> None:
        self._send, self._receive = anyio.create_memory_object_stream[_Request](self.queue_size)

    async def publish(self, events: Sequence[NewEvent]) -> list[Event]:
        """Commit `events` (atomically, in order) with whatever else is being published now."""
        if not events:
            return []
        request = _Request(events)
        self._waiting.add(request)
        try:
            await self._send.send(request)
            await request.done.wait()
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            raise _stopped() from None
        finally:
            self._waiting.discard(request)
        if request.error is not None:
            raise request.error
        assert request.result is not None
        return request.result

    async def run(self) -> None:
        """Run the batching workers until cancelled; then answer whoever is still waiting."""
        receivers = [self._receive.clone() for _ in range(self.workers)]
        try:
            async with anyio.create_task_group() as tg:
                for receiver in receivers:
                    tg.start_soon(self._worker, receiver)
        finally:
            # Workers finish the batch they hold (shielded, bounded) before this runs, so
            # a request not answered by now was never part of a commit.
            self._send.close()
            for receiver in (self._receive, *receivers):
                receiver.close()
            self._fail([r for r in self._waiting if not r.done.is_set()], _stopped())

    async def _worker(self, requests: MemoryObjectReceiveStream[_Request]) -> None:
        async with batch(requests, self.max_requests, self.max_wait, hold=self._busy) as batches:
            async for group in batches:
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
                    [r for r in group if not r.done.is_set()],
                    DatabaseUnavailable(
                        "the database did not answer in time; nothing was acknowledged"
                    ),
                )

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
                on_sequenced=self.on_sequenced,
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
            request.result = published[start : start + len(request.events)]
            start += len(request.events)
            request.done.set()

    @staticmethod
    def _fail(batch: list[_Request], error: Exception) -> None:
        for request in batch:
            request.error = error
            request.done.set()


def _stopped() -> ShuttingDown:
    return ShuttingDown("the server is stopping: nothing was published; retry")
