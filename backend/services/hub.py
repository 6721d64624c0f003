"""The per-process fan-out hub: one read of the log per wake-up, shared by all subscribers.

Each live subscriber owns a bounded mailbox. The hub never waits on a subscriber: when a
mailbox is full the hub closes it and forgets that subscriber ("lagging"). The
subscriber then drains what it already has, reads its backlog from the log itself and
registers again once it has caught up, so a slow reader loses nothing and costs at most one
buffer of memory while everyone else keeps their pace.

Subscribers are found through a subject trie, by walking each event's topic, so the cost
of a delivery does not grow with the number of patterns other subscribers hold.

Everything one read brings goes to each subscriber as one batch. A subscriber whose task
is idle (its buffer empty, waiting for more) may offer a `direct` writer: the hub then
writes the batch straight to that subscriber's connection, and its task is not woken at
all. A writer that cannot take the batch at once (its socket is backed up, or its task is
busy) says so, and the batch goes to the buffer as usual, behind nothing, so the order
holds either way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.lowlevel
from anyio.abc import TaskStatus

from backend.connectors.outage import outage, report_failure
from backend.core.compaction import Table
from backend.core.filters import Filter
from backend.core.mailbox import Mailbox
from backend.core.names import Pattern
from backend.core.subjects import SubjectTrie
from backend.entities.event import Event
from backend.services.log_reader import LogReader

logger = logging.getLogger(__name__)

DISPATCH_SLICE = 32  # subscribers served between two yields to the loop (about 0.25 ms)
MAX_HANDED = 64  # published batches kept for the hub; beyond that it reads them back

DirectWriter = Callable[[list[Event]], bool]
"""Writes a batch to the subscriber's client now and returns True, or does nothing and
returns False; it must not keep or change the list (other subscribers share it)."""


@dataclass(eq=False)
class Registration:
    """One live subscriber as the hub sees it; `start` is the hub position it joined at."""

    patterns: tuple[Pattern, ...]
    filter: Filter | None
    start: int
    mailbox: Mailbox[Event]
    direct: DirectWriter | None = None
    """Set by the subscriber only while its task waits on an empty mailbox; cleared by the
    hub when it refuses a batch (which then goes to the mailbox) and on `unregister`."""

    def wants(self, event: Event, envelope: dict[str, Any] | None) -> bool:
        if self.filter is None:
            return True
        return self.filter.matches(envelope if envelope is not None else event.envelope())


Handout = tuple[Registration, list[Event]]


@dataclass
class HubStats:
    """Cumulative counters, exported by /metrics."""

    reads: int = 0
    deliveries: int = 0
    direct: int = 0
    """Of the deliveries, those written straight to the client by the hub."""
    handed: int = 0
    """Events handed out as this process positioned them (its publishes and its sequencer's
    runs), without a read."""
    overflows: int = 0


@dataclass(eq=False)
class Hub:
    """Reads new events once per wake-up and hands them to matching subscribers."""

    log: LogReader
    buffer_size: int = 1000
    read_batch: int = 1000
    poll_interval: float = 2.0
    position: int = 0
    stats: HubStats = field(default_factory=HubStats)
    after_dispatch: list[Callable[[], None]] = field(default_factory=list)
    """Run once after each read's events are handed out (metrics flush their tallies)."""
    closed: bool = False
    catching_up: int = 0
    _target: int = 0
    """The highest position a wake-up announced; a wake-up already read past needs no read."""
    _must_read: bool = False
    _foreign: bool = False
    """A wake-up since the last drain announced a head another process's session made."""
    _in_flight: set[int] = field(default_factory=set)
    """Statements of this process in flight whose events it will hand over, by number."""
    _flights: int = 0
    _flight_ended: anyio.Event | None = None
    _handed: dict[int, list[Event]] = field(default_factory=dict)
    """Events this process positioned (published, or stamped by its sequencer), by first
    position, not yet handed out."""
    _live: set[Registration] = field(default_factory=set)
    _subjects: SubjectTrie[Registration] = field(default_factory=SubjectTrie)
    _overflowed: set[Registration] = field(default_factory=set)
    _wake: anyio.Event = field(default_factory=anyio.Event)
    _started: anyio.Event = field(default_factory=anyio.Event)
    _advanced: anyio.Event = field(default_factory=anyio.Event)

    @property
    def subscribers(self) -> int:
        """Subscribers on the live path."""
        return len(self._live)

    def tables(self) -> Iterator[Table]:
        """The sets and dicts that grow with the subscribers (`backend.core.compaction`)."""
        yield self._live
        yield self._overflowed
        yield from self._subjects.tables()

    @property
    def draining(self) -> int:
        """Subscribers cut off after an overflow, still working through their buffer."""
        return len(self._overflowed)

    def register(self, patterns: Iterable[Pattern], filter: Filter | None) -> Registration:
        """Join the live path; every event after `position` will be offered to the buffer."""
        reg = Registration(tuple(patterns), filter, self.position, Mailbox(self.buffer_size))
        if self.closed:
            reg.mailbox.close()
            return reg
        self._live.add(reg)
        for pattern in reg.patterns:
            self._subjects.add(pattern, reg)
        return reg

    def unregister(self, reg: Registration) -> None:
        """Leave the live path and free the buffer (synchronous: safe in any cleanup)."""
        reg.direct = None
        self._detach(reg)
        self._overflowed.discard(reg)
        reg.mailbox.close()

    def _detach(self, reg: Registration) -> None:
        if reg not in self._live:
            return
        self._live.discard(reg)
        for pattern in reg.patterns:
            self._subjects.discard(pattern, reg)

    def wake(self, head: int | None = None, *, ours: bool = False) -> None:
        """A hint that the log may have grown (to `head`, when known). `ours`: the head was
        announced by a session of this process, whose events are handed over."""
        if head is None:
            self._must_read = True
        elif self._raise_target(head):
            self._foreign = self._foreign or not ours
        else:
            return
        self._wake.set()
        if (head is None or not ours) and self._flight_ended is not None:
            self._flight_ended.set()  # to be read at once, not after this process's statements

    def _raise_target(self, head: int) -> bool:
        """Note a head beyond what the hub has read; False when it has read past it."""
        if head <= self.position:
            return False
        self._target = max(self._target, head)
        return True

    @contextmanager
    def expecting_hand_over(self) -> Iterator[None]:
        """Around a statement of this process that positions events and hands them over (a
        group-commit batch, a sequencer run). Its commit's notification, or the hand-over of
        a batch that committed after it, can reach the hub before its own hand-over: a read
        then would fetch events about to be handed over. So a drain for a head that only
        this process's sessions announced, and that the hub cannot yet hand out, first
        waits for the statements in flight when it began, then reads what they did not
        hand over. A head another process announced is read at once."""
        flight = self._flights
        self._flights += 1
        self._in_flight.add(flight)
        try:
            yield
        finally:
            self._in_flight.discard(flight)
            if self._flight_ended is not None:
                self._flight_ended.set()

    async def _await_flights(self) -> None:
        """Until the statements in flight now have ended, their events handed over, or a
        wake-up comes that is read at once (another process's head, one without a head)."""
        last = self._flights - 1
        while (
            self._in_flight
            and min(self._in_flight) <= last
            and not (self._foreign or self._must_read)
        ):
            self._flight_ended = anyio.Event()
            await self._flight_ended.wait()
        self._flight_ended = None

    def hand_over(self, events: list[Event]) -> None:
        """Events this process has just committed and positioned, in order: when they are
        the next ones in the log, the hub hands them out without reading them back, even
        while other statements are in flight. Events that are not next wait for the
        statements in flight (those before them are among them) before the gap is read."""
        if not events:
            return
        if len(self._handed) < MAX_HANDED:
            self._handed[events[0].pos] = events
        if self._raise_target(events[-1].pos):
            self._wake.set()

    async def wait_started(self) -> None:
        await self._started.wait()

    def close(self) -> None:
        """End every live stream; subscribers see their iteration finish."""
        self.closed = True
        self._advanced.set()
        for reg in list(self._live):
            self._detach(reg)
            reg.mailbox.close()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Read from the log on each wake-up (and every poll interval) until cancelled."""
        self.position = await self._initial_position()
        self._started.set()
        task_status.started()
        backoff = 0.05
        while True:
            with anyio.move_on_after(self.poll_interval):
                await self._wake.wait()
            must_read = self._must_read or not self._wake.is_set()  # told to, or a poll
            foreign = self._foreign
            self._wake = anyio.Event()
            self._must_read = self._foreign = False
            try:
                await self._drain(must_read, wait_for_ours=not (must_read or foreign))
                backoff = 0.05
                outage.recovered()
            except Exception as exc:  # noqa: BLE001 - keep delivering once the cause goes away
                report_failure(logger, "hub read", exc, action="hub_read_failed")
                await anyio.sleep(backoff)
                backoff = min(backoff * 2, self.poll_interval)
                self.wake()

    async def _initial_position(self) -> int:
        backoff = 0.05
        while True:
            try:
                _, head = await self.log.bounds(live=True)
                return head
            except Exception as exc:  # noqa: BLE001 - wait for the database to come back
                report_failure(logger, "reading the log head", exc, action="hub_read_failed")
                await anyio.sleep(backoff)
                backoff = min(backoff * 2, self.poll_interval)

    async def _drain(self, must_read: bool, *, wait_for_ours: bool) -> None:
        """Hand out what this process published, then read until the log is drained.

        No read when every wake-up since the last one announced a head already passed (a
        publish handed over, or its own NOTIFY coming back after the hub read its events),
        unless `must_read`. `wait_for_ours`: only this process's sessions announced heads, so
        before reading, one wait for its statements in flight (`expecting_hand_over`).
        """
        while True:
            handed = self._next_handed()
            if handed is not None:
                await self._dispatch(handed)
                continue
            if not must_read and self._target <= self.position:
                return
            if wait_for_ours and self._in_flight:
                wait_for_ours = False
                await self._await_flights()
                continue
            must_read = False
            events = await self.log.read_after(self.position, self.read_batch)
            self.stats.reads += 1
            if events:
                await self._dispatch(events)
            if len(events) < self.read_batch:
                return

    def _next_handed(self) -> list[Event] | None:
        """The handed-over events that come next in the log, if some do and nothing else
        lies between them (positions are dense); forgets those already read past."""
        handed = self._handed
        if not handed:
            return None
        events = handed.pop(self.position + 1, None)
        for first in [first for first, later in handed.items() if later[-1].pos <= self.position]:
            del handed[first]
        if events is None or events[-1].pos - events[0].pos != len(events) - 1:
            return None
        self.stats.handed += len(events)
        return events

    async def _dispatch(self, events: list[Event]) -> None:
        """Hand a read's events out, yielding to the loop every DISPATCH_SLICE subscribers
        so that requests (a publish among them) are answered during a large fan-out.

        The position moves first: a subscriber that joins during the fan-out starts after
        this read and finds its events in the log, while the subscribers matched at the
        start get them here.
        """
        self.position = events[-1].pos
        topic = events[0].topic
        if all(event.topic == topic for event in events):
            batches = self._one_topic(topic, events)
        else:
            batches = self._mixed(events)
        for count, (reg, batch) in enumerate(batches, 1):
            self._deliver(reg, batch)
            if count % DISPATCH_SLICE == 0:
                await anyio.lowlevel.checkpoint()
        for hook in self.after_dispatch:
            hook()
        advanced, self._advanced = self._advanced, anyio.Event()
        advanced.set()

    def _one_topic(self, topic: str, events: list[Event]) -> Iterator[Handout]:
        """The usual read, all of one topic: subscribers without a filter share one list."""
        envelopes: list[dict[str, Any]] | None = None
        for reg in self._subjects.match(topic):  # a new set: joins and leaves do not touch it
            if reg.filter is None:
                yield reg, events
                continue
            if envelopes is None:
                envelopes = [event.envelope() for event in events]
            matches = reg.filter.matches
            batch = [e for e, env in zip(events, envelopes, strict=True) if matches(env)]
            if batch:
                yield reg, batch

    def _mixed(self, events: list[Event]) -> Iterator[Handout]:
        batches: dict[Registration, list[Event]] = {}
        targets_of: dict[str, set[Registration]] = {}
        for event in events:
            targets = targets_of.get(event.topic)
            if targets is None:
                targets = targets_of[event.topic] = self._subjects.match(event.topic)
            envelope = event.envelope() if any(r.filter for r in targets) else None
            for reg in targets:
                if reg.wants(event, envelope):
                    batch = batches.get(reg)
                    if batch is None:
                        batches[reg] = [event]
                    else:
                        batch.append(event)
        yield from batches.items()

    def _deliver(self, reg: Registration, batch: list[Event]) -> None:
        """Through the subscriber's direct writer when it takes the batch, else buffered."""
        writer = reg.direct
        if writer is not None:
            try:
                written = writer(batch)
            except Exception:  # a broken writer must not stop the fan-out
                logger.exception("a direct writer failed", extra={"action": "direct_failed"})
                written = False
            if written:
                self.stats.direct += len(batch)
                self.stats.deliveries += len(batch)
                return
        self._hand(reg, batch)

    async def wait_beyond(self, pos: int) -> None:
        """Return once the hub has read past `pos` (or closed): for long-polling readers."""
        while self.position <= pos and not self.closed:
            await self._advanced.wait()

    def _hand(self, reg: Registration, batch: list[Event]) -> None:
        """Buffer `batch` for the subscriber's task (which wakes), or cut it off when full.

        Its direct writer, if any, refused the batch: it stays off until the task, having
        written what is buffered, waits on an empty buffer again and so keeps the order."""
        reg.direct = None
        mailbox = reg.mailbox
        if mailbox.offer_all(batch):
            self.stats.deliveries += len(batch)
            return
        self._detach(reg)
        if mailbox.closed:
            return  # the subscriber left or was stopped
        self.stats.overflows += 1
        self._overflowed.add(reg)
        mailbox.close()
        logger.info("subscriber lagging; it will catch up from the log", extra={"action": "lagged"})
