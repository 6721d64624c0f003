"""The topics of the retained log, for `GET /topics` and `pgcast topics`."""

from __future__ import annotations

from backend.connectors.database import Pool
from backend.connectors.store import log as log_queries
from backend.connectors.store.log import TopicSelector, TopicSummary
from backend.core.names import Pattern


async def list_topics(pool: Pool, pattern: Pattern, after: str, limit: int) -> list[TopicSummary]:
    """Up to `limit` topics matching `pattern` whose names sort after `after`."""
    async with pool.acquire() as conn:
        return await log_queries.topic_summaries(conn, TopicSelector.of([pattern]), after, limit)
