"""Subscriptions: catch up from the log, then follow the hub, with no gap and no duplicate.

Positions are assigned in commit-visibility order, so "everything after position X" is a
well-defined, stable set. A subscription reads its backlog in pages straight from the log
(per-subscriber queries happen only here, never on the live path), joins the hub, reads
the few events committed while it was joining, and then takes live events from its buffer,
skipping any position it has already delivered. If it falls behind the hub it repeats the
cycle from where it stopped.

A transport that can write to its client without waiting sets `sink`: while the
subscription's task is idle on the live path (its buffer empty, nothing taken and not yet
written), the hub writes through it directly and the task sleeps on. A transport that can
also start a task for it again sets `resume`: there, the live loop ends instead of
sleeping ("parks"), so an idle subscription holds no task and no generator frame at all,
and the next thing its buffer gets (an event the writer refused, `stop`, the hub closing)
calls `resume`, whose new task picks up where the old one ended.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field

from backend.core.errors import CursorExpired
from backend.core.filters import Filter, compile_filter
from backend.core.names import Pattern, parse_patterns
from backend.entities.event import Event, format_id, parse_id
from backend.services.hub import DirectWriter, Hub, Registration
from backend.services.log_reader import LogReader

logger = logging.getLogger(__name__)

EARLIEST = "earliest"
LATEST = "latest"

PatternsLike = str | Pattern | Sequence[str | Pattern]


def as_patterns(patterns: PatternsLike) -> tuple[Pattern, ...]:
    """Accept one pattern or several, as text or already parsed."""
    items = [patterns] if isinstance(patterns, str | Pattern) else list(patterns)
    if all(isinstance(p, Pattern) for p in items) and items:
        return tuple(p for p in items if isinstance(p, Pattern))
    return parse_patterns(p.text if isinstance(p, Pattern) else p for p in items)


def expired(reason: str, pruned_through: int, detail: str) -> CursorExpired:
    oldest = format_id(pruned_through + 1)
    return CursorExpired(
        f"{detail}; the oldest available event is {oldest}", oldest=oldest, reason=reason
    )


async def resolve_start(log: LogReader, after: str | int) -> int:
    """Turn `earliest`, `latest` or an event id into a log position, or raise CursorExpired."""
    pruned, head = await log.bounds()
    if after == EARLIEST:
        return pruned
    if after == LATEST:
        return head
    pos = after if isinstance(after, int) else parse_id(after)
    if pos < pruned:
        raise expired(
            "pruned", pruned, f"event {format_id(pos)} is older than the retention window"
        )
    if pos > head:
        raise expired("unknown", pruned, f"event {format_id(pos)} is not in this log")
    return pos


@dataclass(eq=False)
class Subscription:
    """One subscriber's stream; `position` is the last position it has passed."""

    hub: Hub
    patterns: tuple[Pattern, ...]
    filter: Filter | None
    position: int
    page_size: int = 500
    sink: DirectWriter | None = None
    resume: Callable[[], None] | None = None
    """With a `sink`: serves the subscription again from a new task (see the module's
    docstring); called at most once per park, from whichever task wakes the buffer."""
    parked: bool = field(default=False, init=False)
    """The live loop ended idle, leaving the registration and its direct writer in place."""
    _reg: Registration | None = field(default=None, init=False)
    _stopped: bool = field(default=False, init=False)

    def join_if_near(self) -> None:
        """Register with the hub now when little backlog is left, so events buffer from here on;
        never once stopped (nothing would close the new registration's buffer)."""
        if (
            self._reg is None
            and not self._stopped
            and self.hub.position - self.position <= self.hub.buffer_size // 2
        ):
            self._reg = self.hub.register(self.patterns, self.filter)

    def close(self) -> None:
        """Leave the hub; idempotent and synchronous, so safe in any cleanup path."""
        self.parked = False
        if self._reg is not None:
            self._reg.mailbox.on_wake(None)
            self.hub.unregister(self._reg)
            self._reg = None

    def stop(self) -> None:
        """End the stream soon, from outside it: after what is buffered, or the current page.

        Synchronous and safe from another task; the iteration then finishes normally, so
        the consumer can still say goodbye on its connection.
        """
        self._stopped = True
        if self._reg is not None:
            self._reg.direct = None
            self._reg.mailbox.close()

    def poke(self) -> None:
        """Make a live `batches` yield an empty list soon, so its consumer runs once without
        an event (a heartbeat); no effect while catching up, which yields anyway."""
        if self._reg is not None:
            self._reg.mailbox.poke()

    async def events(self) -> AsyncGenerator[Event, None]:
        """Catch-up then live, one event at a time, until the hub closes or `stop`."""
        async with aclosing(self.batches()) as batches:
            async for batch in batches:
                for event in batch:
                    yield event

    async def batches(self) -> AsyncGenerator[list[Event], None]:
        """Catch-up then live, as lists: a page of backlog, or all a live buffer holds.

        Lists let a transport write everything that is ready at once, so a busy stream
        costs one wake-up and one write per batch rather than per event. An empty list
        answers a `poke`.
        """
        try:
            # A registration left by a park is drained first, even once stopped or closed.
            while self._reg is not None or (not self.hub.closed and not self._stopped):
                if self._reg is None:
                    self.hub.catching_up += 1
                    try:
                        while self._reg is None and not self._stopped:
                            upto = self.hub.position
                            while (page := await self._page(upto)) is not None:
                                if page:
                                    yield page
                            self.join_if_near()
                    finally:
                        self.hub.catching_up -= 1
                reg = self._reg
                if reg is None:
                    return
                while (page := await self._page(reg.start)) is not None:
                    if page:
                        yield page
                # Live, in this frame rather than a generator of its own: an idle
                # subscription keeps one frame fewer (docs/performance.md). Each round takes
                # everything buffered, minus positions already passed; [] when poked. While
                # it waits on an empty buffer, the hub may write through `sink`.
                mailbox = reg.mailbox
                direct = self._write_through if self.sink is not None else None
                while True:
                    taken = mailbox.ready(self.page_size)
                    if taken is None:
                        reg.direct = direct
                        if direct is not None and self.resume is not None:
                            self.parked = True
                            mailbox.on_wake(self._unpark)
                            return
                        try:
                            await mailbox.arrival()
                        finally:
                            reg.direct = None
                    elif taken:
                        if batch := self._unseen(taken):
                            yield batch
                    elif mailbox.closed:
                        break
                    else:
                        yield taken  # poked: [] while still open
                self.close()
        finally:
            if not self.parked:
                self.close()

    def _unpark(self) -> None:
        """The buffer was woken while parked: the task to be started owns delivery again.
        Runs inside the hub's fan-out, which a failing `resume` must not stop."""
        self.parked = False
        if self._reg is not None:
            self._reg.direct = None
        if self.resume is not None:
            try:
                self.resume()
            except Exception:
                logger.exception("resuming failed", extra={"action": "resume_failed"})
                self.close()

    async def _page(self, upto: int) -> list[Event] | None:
        """The next page of backlog before `upto`: the events the filter wants (perhaps
        none) with the position moved past the page; None once there is no more, or
        stopped. A coroutine rather than a generator, so nothing is left to close when
        `batches` is closed while it writes a page."""
        if self.position >= upto or self._stopped:
            return None
        page = await self.hub.log.read_page(self.patterns, self.position, upto, self.page_size)
        if page.pruned_through > self.position:
            raise expired(
                "pruned", page.pruned_through, "the log was pruned past this subscription"
            )
        wanted = []
        for event in page.events:
            self.position = event.pos
            if self.filter is None or self.filter.matches(event.envelope()):
                wanted.append(event)
        if len(page.events) < self.page_size:
            self.position = max(self.position, upto)
        return wanted

    def _unseen(self, events: list[Event]) -> list[Event]:
        """The events past this subscription's position, which then moves to the last."""
        batch = [event for event in events if event.pos > self.position]
        if batch:
            self.position = batch[-1].pos
        return batch

    def _write_through(self, events: list[Event]) -> bool:
        """The hub's direct write: the same skip of passed positions as the buffered path."""
        sink = self.sink
        if sink is None or self._stopped:
            return False
        if events[0].pos <= self.position:
            events = [event for event in events if event.pos > self.position]
            if not events:
                return True
        if not sink(events):
            return False
        self.position = events[-1].pos
        return True


async def start_subscription(
    hub: Hub,
    patterns: PatternsLike,
    after: str | int = LATEST,
    filter: str | Filter | None = None,
) -> Subscription:
    """Validate, resolve the start and join the hub if near it; the caller must `close` it.

    For transports, which hold one per open stream: no context manager of its own, so an
    idle stream keeps fewer frames alive (see `open_subscription` for everyone else).
    """
    parsed = as_patterns(patterns)
    compiled = compile_filter(filter) if isinstance(filter, str) or filter is None else filter
    start = await resolve_start(hub.log, after)
    await hub.wait_started()
    subscription = Subscription(hub, parsed, compiled, start)
    subscription.join_if_near()
    return subscription


@asynccontextmanager
async def open_subscription(
    hub: Hub,
    patterns: PatternsLike,
    after: str | int = LATEST,
    filter: str | Filter | None = None,
) -> AsyncIterator[tuple[Subscription, AsyncIterator[Event]]]:
    """Validate, resolve the start, and hold the stream open for the block."""
    subscription = await start_subscription(hub, patterns, after, filter)
    try:
        async with aclosing(subscription.events()) as stream:
            yield subscription, stream
    finally:
        subscription.close()
