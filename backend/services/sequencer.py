"""Background sequencing for events published by SQL inside other applications' transactions.

Such transactions send one `pgcast_pending` wake-up at commit. Any process that hears it (or
whose slow poll finds unpositioned rows) runs the sequencer; the row lock in
`pgcast.sequence_pending` makes concurrent runs across processes safe and ordered.

Each run that finds work is a commit of its own (WAL flush and NOTIFY). A stream of SQL
publishes wakes the sequencer once per transaction, so runs are spaced `min_interval` apart:
while the stream lasts, one run stamps every commit of the last interval instead of adding
a commit per event. A wake-up after a quiet spell runs at once.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio

from backend.connectors.database import Pool
from backend.connectors.outage import report_failure
from backend.connectors.store import log as log_queries

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class Sequencer:
    pool: Pool
    on_sequenced: Callable[[], None]
    poll_interval: float = 2.0
    min_interval: float = 0.002
    runs: int = 0
    _wake: anyio.Event = field(default_factory=anyio.Event)
    _last_run: float = field(default=-math.inf, init=False)

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            with anyio.move_on_after(self.poll_interval):
                await self._wake.wait()
            await anyio.sleep_until(self._last_run + self.min_interval)
            self._wake = anyio.Event()
            self._last_run = anyio.current_time()
            try:
                async with self.pool.acquire(live=True) as conn:
                    stamped = await log_queries.sequence_pending(conn)
            except Exception as exc:  # noqa: BLE001 - the next wake-up or poll retries
                report_failure(logger, "sequencer", exc, action="sequencer_failed")
                continue
            self.runs += 1
            if stamped:
                self.on_sequenced()
