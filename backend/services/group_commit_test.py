"""Group commit batches concurrent publishes; a bad request fails only itself."""

from __future__ import annotations

import anyio
import pytest

from backend.core.errors import InvalidEvent
from backend.entities.event import Event, NewEvent
from backend.testing.engine import running_engine, take

pytestmark = [pytest.mark.integrated, pytest.mark.anyio]


async def test_concurrent_publishes_share_transactions(database_url: str) -> None:
    async with running_engine(database_url, group_commit_wait_ms=20) as engine:
        results: dict[int, Event] = {}

        async def one(i: int) -> None:
            (results[i],) = await engine.publish_many([engine.event("gc", i)])

        async with engine.subscribe("gc", after="latest") as events:
            async with anyio.create_task_group() as tg:
                for i in range(50):
                    tg.start_soon(one, i)
            delivered = await take(events, 50)
        assert sorted(e.data for e in delivered) == list(range(50))
        assert {results[i].data for i in range(50)} == set(range(50))
        assert engine.committer.stats.events == 50
        assert engine.committer.stats.batches < 50


async def test_one_bad_request_in_a_batch_fails_only_itself(database_url: str) -> None:
    async with running_engine(database_url, group_commit_wait_ms=20) as engine:
        outcome: dict[str, object] = {}

        async def good(name: str) -> None:
            (event,) = await engine.publish_many([engine.event("gc", name)])
            outcome[name] = event.data

        async def bad() -> None:
            # Postgres refuses \u0000 inside jsonb; built directly, this event skips the
            # check that otherwise refuses it before it reaches the database.
            try:
                await engine.publish_many([NewEvent("gc", b'"nul\\u0000byte"')])
            except InvalidEvent as exc:
                outcome["bad"] = exc

        async with anyio.create_task_group() as tg:
            tg.start_soon(good, "a")
            tg.start_soon(bad)
            tg.start_soon(good, "b")
        assert outcome["a"] == "a"
        assert outcome["b"] == "b"
        assert isinstance(outcome["bad"], InvalidEvent)
        assert "rejected" in str(outcome["bad"])
