"""Pruning events older than RETENTION, in small batches so no statement runs long."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import anyio

from backend.connectors.database import Pool
from backend.connectors.outage import report_failure
from backend.connectors.store import log as log_queries
from backend.connectors.store.idempotency import prune_keys

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class Retention:
    pool: Pool
    retention: timedelta
    interval: float = 60.0
    batch: int = 5000
    idempotency_ttl: timedelta = timedelta(hours=24)
    pruned: int = 0

    async def prune_once(self) -> int:
        """Delete every expired event now; returns how many went."""
        cutoff = datetime.now(UTC) - self.retention
        total = 0
        while True:
            async with self.pool.acquire() as conn:
                pruned = await log_queries.prune_before(conn, cutoff, self.batch)
            total += pruned.events
            if pruned.rows < self.batch:
                break
        async with self.pool.acquire() as conn:
            await prune_keys(conn, self.idempotency_ttl, datetime.now(UTC))
        if total:
            self.pruned += total
            logger.info("pruned %d events", total, extra={"action": "pruned", "count": total})
        return total

    async def run(self) -> None:
        while True:
            try:
                await self.prune_once()
            except Exception as exc:  # noqa: BLE001 - the next run retries
                report_failure(logger, "retention", exc, action="prune_failed")
            await anyio.sleep(self.interval)
