"""Background sequencing for events published by SQL inside other applications' transactions.

Such transactions send one `pgcast_pending` wake-up at commit. Any process that hears it (or
whose slow poll finds unpositioned rows) runs the sequencer; the row lock in
`pgcast.sequence_pending` makes concurrent runs across processes safe and ordered.

Each run that finds work is a commit of its own (WAL flush and NOTIFY), and that commit
competes with the publishers' own. A stream of SQL publishes wakes the sequencer once per
transaction, so runs are spaced: a wake-up that comes within the spacing of the last run
waits for it. The spacing starts at `min_interval`; while SQL publishes commit faster than
`busy_rate` events per second it doubles after each run (up to `max_interval`), and once
they slow down it halves again. A heavy stream then pays one run per few milliseconds of
commits instead of one per handful of events, while a stream below that rate (and its
delivery latency) keeps the short spacing. The rate is measured per run (events stamped
since the previous run began), so a longer spacing does not feed itself. A wake-up after a
quiet spell runs at once.

A run stamps up to `hand_limit` events in a statement that returns them, and hands them
to this process's hub, which then needs no read of its own for them. A larger backlog
(a bulk capture) is stamped in big batches that return only a count; the hub reads those
in pages, as it reads what other processes stamp. The run's own `pgcast_events`
notification may reach the hub before the run's answer does; the hub holds such wake-ups
until the run has handed its events over, so it does not read them back.
"""

from __future__ import annotations

import logging
import math
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Protocol

import anyio

from backend.connectors.database import Pool
from backend.connectors.outage import report_failure
from backend.connectors.store import log as log_queries
from backend.entities.event import Event

logger = logging.getLogger(__name__)


class Recipient(Protocol):
    """Where a run's events go: the process's hub."""

    def hand_over(self, events: list[Event]) -> None:
        """Events just stamped, in position order."""

    def wake(self, head: int | None = None) -> None:
        """Events were stamped that were not handed over: read the log."""

    def expecting_hand_over(self) -> AbstractContextManager[None]:
        """Hold wake-ups that announce a head while a run is in flight."""


@dataclass(eq=False)
class Sequencer:
    pool: Pool
    recipient: Recipient
    poll_interval: float = 2.0
    min_interval: float = 0.002
    max_interval: float = 0.02
    busy_rate: float = 2000.0
    """Events per second of SQL publishes from which longer spacing is worth its latency."""
    hand_limit: int = 1000
    runs: int = 0
    spacing: float = field(default=0.0, init=False)
    """The current spacing between runs, between `min_interval` and `max_interval`."""
    _wake: anyio.Event = field(default_factory=anyio.Event)
    _started: float = field(default=-math.inf, init=False)
    _finished: float = field(default=-math.inf, init=False)

    def __post_init__(self) -> None:
        self.spacing = self.min_interval

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            with anyio.move_on_after(self.poll_interval):
                await self._wake.wait()
            if anyio.current_time() - self._finished < self.spacing:
                await anyio.sleep_until(self._started + self.spacing)  # the stream goes on
            else:
                self.spacing = self.min_interval  # after a quiet spell: at once
            self._wake = anyio.Event()
            previous, self._started = self._started, anyio.current_time()
            try:
                stamped = await self._stamp()
            except Exception as exc:  # noqa: BLE001 - the next wake-up or poll retries
                report_failure(logger, "sequencer", exc, action="sequencer_failed")
                continue
            finally:
                self._finished = anyio.current_time()
            self.runs += 1
            if stamped >= self.busy_rate * (self._started - previous):
                self.spacing = min(self.spacing * 2, self.max_interval)
            else:
                self.spacing = max(self.spacing / 2, self.min_interval)

    async def _stamp(self) -> int:
        # Each statement is one transaction in autocommit and leaves no session state.
        async with self.pool.acquire(live=True, stateless=True) as conn:
            with self.recipient.expecting_hand_over():
                events = await log_queries.sequence_returning(conn, self.hand_limit)
                if events:
                    self.recipient.hand_over(events)
            if len(events) < self.hand_limit:
                return len(events)
            more = await log_queries.sequence_pending(conn)
            if more:
                self.recipient.wake()
            return len(events) + more
