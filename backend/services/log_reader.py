"""What the hub and subscriptions need of the event log, and nothing more.

PostgreSQL's implementation is `connectors.store.log.PostgresLog`; tests of the fan-out
and catch-up logic use an in-memory log with the same behaviour
(`backend/testing/memory_log.py`), so that logic is tested without a database.
"""

from __future__ import annotations

from typing import Protocol

from backend.connectors.store.log import Page
from backend.core.names import Pattern
from backend.entities.event import Event


class LogReader(Protocol):
    async def bounds(self, *, live: bool = False) -> tuple[int, int]:
        """(pruned_through, head): positions up to the first are gone; the second is the last."""
        ...

    async def read_after(self, after: int, limit: int) -> list[Event]:
        """Every topic's events after `after`, in position order (the hub's one read)."""
        ...

    async def read_page(
        self, patterns: tuple[Pattern, ...], after: int, upto: int, limit: int
    ) -> Page:
        """Events matching `patterns` with after < pos <= upto, and the retention watermark."""
        ...
