"""An event log in memory, for testing the hub and subscriptions without a database.

It behaves as `connectors.store.log.PostgresLog` does for them: positions are dense and
visible in order, `read_after` and `read_page` return events in position order, and
pruning moves the watermark that turns an old resume point into `CursorExpired`. It is a
real log (appends, reads, pruning), not a recording of calls.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import anyio.lowlevel
import orjson

from backend.connectors.store.log import Page
from backend.core.names import Pattern
from backend.entities.event import Event


@dataclass
class MemoryLog:
    events: list[Event] = field(default_factory=list)
    pruned_through: int = 0
    reads: int = 0

    @property
    def head(self) -> int:
        return self.events[-1].pos if self.events else self.pruned_through

    def append(self, topic: str, data: Any) -> Event:
        """Commit and position one event (what a publish plus the sequencer do)."""
        event = Event(
            pos=self.head + 1,
            topic=topic,
            type=None,
            key=None,
            data_json=orjson.dumps(data),
            time=datetime.now(UTC),
        )
        self.events.append(event)
        return event

    def prune(self, through: int) -> None:
        """Drop every event up to `through`, as retention does."""
        self.events = [e for e in self.events if e.pos > through]
        self.pruned_through = max(self.pruned_through, through)

    async def bounds(self, *, live: bool = False) -> tuple[int, int]:
        await anyio.lowlevel.checkpoint()
        return self.pruned_through, self.head

    async def read_after(self, after: int, limit: int) -> list[Event]:
        await anyio.lowlevel.checkpoint()
        self.reads += 1
        return [e for e in self.events if e.pos > after][:limit]

    async def read_page(
        self, patterns: tuple[Pattern, ...], after: int, upto: int, limit: int
    ) -> Page:
        await anyio.lowlevel.checkpoint()
        matching = [
            e
            for e in self.events
            if after < e.pos <= upto and any(p.matches(e.topic) for p in patterns)
        ]
        return Page(matching[:limit], self.pruned_through)
