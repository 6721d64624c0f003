"""Listing topics against a real database: counts, newest event, patterns, paging."""

from __future__ import annotations

import pytest

from backend.connectors.database import connect
from backend.core.names import Pattern
from backend.testing.engine import running_engine

pytestmark = [pytest.mark.integrated, pytest.mark.anyio]


async def test_topics_count_retained_events_and_name_the_newest(database_url: str) -> None:
    async with running_engine(database_url) as engine:
        for topic, count in [("orders.created", 3), ("orders.paid", 1), ("users", 2)]:
            for n in range(count):
                newest = await engine.publish(topic, {"n": n})
        every = await engine.topics(Pattern.parse(">"), "", 100)
        assert [(t.topic, t.events) for t in every] == [
            ("orders.created", 3),
            ("orders.paid", 1),
            ("users", 2),
        ]
        assert every[-1].newest_pos == newest.pos
        assert every[-1].newest_time == newest.time
        assert [t.topic for t in await engine.topics(Pattern.parse("orders.*"), "", 100)] == [
            "orders.created",
            "orders.paid",
        ]
        assert [t.topic for t in await engine.topics(Pattern.parse("users"), "", 100)] == ["users"]
        first = await engine.topics(Pattern.parse(">"), "", 2)
        rest = await engine.topics(Pattern.parse(">"), first[-1].topic, 2)
        assert [t.topic for t in first + rest] == [t.topic for t in every]

        conn = await connect(database_url)
        try:  # pruned events are not counted; a topic with none left is not listed
            await conn.execute("DELETE FROM pgcast.events WHERE topic = 'orders.paid'")
        finally:
            await conn.close()
        assert [t.topic for t in await engine.topics(Pattern.parse(">"), "", 100)] == [
            "orders.created",
            "users",
        ]


async def test_a_wildcard_pattern_skips_topics_it_does_not_match(database_url: str) -> None:
    async with running_engine(database_url) as engine:
        for topic in ["a.1", "b.1", "b.2.x", "c"]:
            await engine.publish(topic, None)
        found = await engine.topics(Pattern.parse("b.>"), "a.1", 1)
        assert [(t.topic, t.events) for t in found] == [("b.1", 1)]
        found = await engine.topics(Pattern.parse("b.>"), "b.1", 10)
        assert [t.topic for t in found] == ["b.2.x"]
