"""Hand freed heap pages back to the OS once many connections have closed.

When thousands of streams close, much of what they held sits in reference cycles that an
idle server's garbage collector does not get round to, and what Python frees the C
allocator keeps, so the process's RSS stays near its peak (5.9x the start after 19,000
SSE clients left). A full collection, then tables sized for what is left for the sets
and dicts that held the crowd (`backend.core.compaction`: an emptied table is live memory
no allocator can return), then the allocator's release (jemalloc's purge of every arena,
or glibc's `malloc_trim(0)`; `backend.core.allocator`) give it back. The collection and
the release walk the whole heap, so the sweeps call them only after the number of open
connections has fallen by at least TRIM_MIN_CLOSED and by half since its last high point
(and once more a round later). Under pymalloc (`ALLOCATOR=pymalloc`, or no jemalloc on
the machine) arenas of small Python objects go back only when wholly empty
(docs/performance.md).
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable, Iterable

from backend.core.allocator import RELEASE
from backend.core.compaction import Table, compact

TableSource = Callable[[], Iterable[Table]]
"""Gives the sets and dicts of one owner (the hub, the HTTP server, the runtime)."""

logger = logging.getLogger(__name__)

TRIM_MIN_CLOSED = 1000


class Trimmer:
    """Watches one count of open connections (noted once per sweep round) and trims
    after a large drop, and once more at the next round: a crowd that is still closing
    when the drop is seen frees most of its memory after that first trim. Each of
    `sources` gives sets and dicts to compact at each trim."""

    __slots__ = ("again", "high", "sources", "trims")

    def __init__(self, *sources: TableSource) -> None:
        self.high = 0
        self.trims = 0
        self.again = False
        self.sources = sources

    def opened(self, open_now: int) -> None:
        """Raise the high point as streams open: a crowd may come and go between rounds."""
        if open_now > self.high:
            self.high = open_now

    def note(self, open_now: int) -> None:
        """Record the current count; trim when it has fallen enough since the high point."""
        if open_now > self.high:
            self.high = open_now
        elif self.high - open_now >= max(TRIM_MIN_CLOSED, self.high // 2):
            self.high = open_now
            self.again = True
            self._trim()
        elif self.again:
            self.again = False
            self._trim()

    def _trim(self) -> None:
        self.trims += 1
        gc.collect()  # a closed stream's objects hold cycles, and an idle server collects none
        compacted = self._compact()
        if RELEASE is not None:
            RELEASE()
            logger.debug(
                "returned freed memory to the OS (%d emptied tables re-sized)",
                compacted,
                extra={"action": "malloc_trim"},
            )

    def _compact(self) -> int:
        """Re-size the emptied tables, source by source; a failure (the runtime's internals
        are not an API) is logged, leaves the other sources' tables to be re-sized, and
        must not end the sweep that trims."""
        compacted = 0
        for source in self.sources:
            try:
                compacted += sum(compact(table) for table in source())
            except Exception:
                logger.warning("could not re-size the tables a crowd left", exc_info=True)
        return compacted
