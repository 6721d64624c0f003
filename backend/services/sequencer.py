"""Background sequencing for events published by SQL inside other applications' transactions.

Such transactions send one `pgcast_pending` wake-up at commit (none while a busy sequencer
holds its lease, below). Any process that hears it (or whose slow poll finds unpositioned
rows) runs the sequencer; the row lock that
`pgcast.sequence_returning` and `pgcast.sequence_pending` take makes concurrent runs across
processes safe and ordered.

Each run that finds work is a commit of its own (WAL flush and NOTIFY), and that commit
competes with the publishers' own. A stream of SQL publishes wakes the sequencer once per
transaction, so runs are spaced: a wake-up that comes within the spacing of the last run
waits for it. The spacing starts at `min_interval`; once the log grows faster than
`busy_rate` events per second it doubles after each run (up to `max_interval`), and once
it slows below half that rate it halves again. A heavy stream then pays one run per few
milliseconds of commits instead of one per handful of events, while a slower stream (and
its delivery latency) keeps the short spacing. The rate is how far the log's head moved
between two runs that stamped something, whatever process stamped it, so a longer spacing
does not feed itself and several processes see the same rate. A wake-up after a quiet
spell runs at once.

The wake-ups themselves are costly: a notifying commit holds PostgreSQL's database-wide
notification lock through its WAL flush, so concurrent publishers committed one at a time.
While the log is busy in that sense (whatever the spacing), a run that stamps events also
takes a lease of `busy_lease` seconds (`pgcast.sequencer_lease`):
`pgcast.publish` sends no wake-up while one is current, and this process runs on its
spacing until the lease ends. A run that finds nothing ends the busy state (no further
lease); after the lease the process polls at growing intervals (each wait as long as the
time since it ended, up to `poll_interval`) for transactions that published under the
lease and commit later.

A run stamps up to `hand_limit` log rows in a statement that also returns their events,
as long as they fit `HAND_BYTES` (the position lock is held until they are sent) and up
to the first chunk of a captured statement (its events are built when read), and hands
them to this process's hub, which then needs no read of its own for them. What is not
returned, and a larger backlog (stamped in big batches that return only a count), the hub
reads in pages, as it reads what other processes stamp. The run's own `pgcast_events`
notification may reach the hub before the run's answer does; the run is inside the hub's
`expecting_hand_over`, so the hub waits for its hand-over rather than read them back.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Protocol

import anyio

from backend.connectors.database import Connection, Pool
from backend.connectors.outage import report_failure
from backend.connectors.store import log as log_queries
from backend.services.publish import HandOver

logger = logging.getLogger(__name__)

HAND_BYTES = 256 * 1024
"""The most event data one run returns, stored size: small enough to cross a local socket
at once, so the position lock is not held waiting for this process to read."""


class Recipient(HandOver, Protocol):
    """Where a run's events go: the process's hub, which reads the log when told to."""

    def wake(self) -> None:
        """Events were stamped that were not handed over: read the log."""


@dataclass(eq=False)
class Sequencer:
    pool: Pool
    recipient: Recipient
    poll_interval: float = 2.0
    min_interval: float = 0.002
    max_interval: float = 0.005
    busy_rate: float = 2000.0
    """Log growth, events per second, from which a longer spacing is worth its latency."""
    hand_limit: int = 1000
    """The most events one run hands over: the hub's read batch."""
    busy_lease: float = 0.5
    """How long a run made while the log is busy tells SQL publishers not to wake it."""
    runs: int = 0
    spacing: float = field(default=0.0, init=False)
    """How long after a run's start the next may start while wake-ups keep coming."""
    busy: bool = field(default=False, init=False)
    """Whether the last run that stamped something found the log growing at `busy_rate`."""
    _wake: anyio.Event = field(default_factory=anyio.Event)
    _started: float = field(default=-math.inf, init=False)
    _finished: float = field(default=-math.inf, init=False)
    _head: int | None = field(default=None, init=False)
    """The log's head after the last run that stamped something, and when that run began."""
    _head_at: float = field(default=-math.inf, init=False)
    _polling_until: float = field(default=-math.inf, init=False)
    """The end of the last lease this process took: it runs without wake-ups until then."""

    def __post_init__(self) -> None:
        self.spacing = self.min_interval

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            await self._next_turn()
            try:
                async with self.pool.acquire(live=True, stateless=True) as conn:
                    await self._run_while_busy(conn)
            except Exception as exc:  # noqa: BLE001 - the next wake-up or poll retries
                report_failure(logger, "sequencer", exc, action="sequencer_failed")
                self._finish(0.0)  # a failed connect too: the wake-up it answered is spent
                self.busy = False  # retried by wake-ups and polls, not every spacing

    async def _next_turn(self) -> None:
        """Until the next run may start, which then starts (wake-ups from then on ask for
        the one after it).

        Under this process's lease publishers send no wake-ups, and one would not start a
        run before its spacing anyway, so it sleeps out the spacing (a wait whose timeout
        ran out at every run paid for a cancellation each time: anyio writes the task's
        description into it). Otherwise it waits for a wake-up or the poll; a run within
        the spacing of the last one waits for the spacing too, and one after a quiet spell
        runs at once, with the shortest spacing again.
        """
        now = anyio.current_time()
        if now < self._polling_until:
            await anyio.sleep_until(self._started + self.spacing)
        else:
            with anyio.move_on_after(
                min(self.poll_interval, max(self.spacing, now - self._polling_until))
            ):
                await self._wake.wait()
            if anyio.current_time() - self._finished < self.spacing:
                await anyio.sleep_until(self._started + self.spacing)  # the stream goes on
            else:
                self.spacing, self.busy = self.min_interval, False
        self._wake = anyio.Event()
        self._started = anyio.current_time()

    async def _run_while_busy(self, conn: Connection) -> None:
        """Runs on `conn` for as long as the log stays busy. Between such runs this
        process holds the lease and only sleeps out the spacing, so it keeps the
        connection rather than give it back to the pool and take it again every few
        milliseconds (a quarter of the server's CPU with one connection publishing from
        SQL), as long as the pool can spare it (`Pool.can_spare`)."""
        while True:
            lease = self.busy_lease if self.busy else 0.0
            try:
                head = await self._stamp(conn, lease)
            except Exception:
                self._finish(lease)  # it may have stored its lease before failing
                raise
            self._finish(lease if head is not None else 0.0)
            self.runs += 1
            if head is None:
                self.busy = False  # the stream stopped: the polls run out with the lease
                return
            self._space(head)
            now = anyio.current_time()
            if not (self.busy and now < self._polling_until and self.pool.can_spare()):
                return
            await self._next_turn()

    def _finish(self, lease: float) -> None:
        """After a run that stored a lease of `lease` seconds (0: none): poll until it ends,
        counted from after the answer, so never ending before the stored one."""
        self._finished = anyio.current_time()
        if lease:
            self._polling_until = max(self._polling_until, self._finished + lease)

    def _space(self, head: int) -> None:
        """After a run that stamped up to `head`: double or halve the spacing by the rate
        at which the log grew since the last such run. A busy log stays busy until that
        rate falls below half `busy_rate`: measured over a few milliseconds, a rate near
        the threshold would otherwise flip the spacing run by run."""
        last = self._head
        threshold = self.busy_rate / 2 if self.busy else self.busy_rate
        self.busy = last is not None and head - last >= threshold * (self._started - self._head_at)
        if self.busy:
            self.spacing = min(self.spacing * 2, self.max_interval)
        else:
            self.spacing = max(self.spacing / 2, self.min_interval)
        self._head, self._head_at = head, self._started

    async def _stamp(self, conn: Connection, lease: float) -> int | None:
        """One run, taking a lease of `lease` seconds if it stamps anything (0: none); the
        log's head after it, or None when it stamped nothing."""
        # Each statement is one transaction in autocommit and leaves no session state.
        with self.recipient.expecting_hand_over():
            run = await log_queries.sequence_returning(conn, self.hand_limit, HAND_BYTES, lease)
            if run.events:
                self.recipient.hand_over(run.events)
        if run.head is None:
            return None
        # A full batch of rows gave at least `hand_limit` positions: there may be more.
        more = await log_queries.sequence_pending(conn) if run.positions >= self.hand_limit else 0
        if more or len(run.events) < run.positions:
            self.recipient.wake()
        return run.head + more
