"""Subscribers catching up cannot starve the live path: it has connections of its own."""

from __future__ import annotations

from contextlib import AsyncExitStack

import anyio
import pytest

from backend.core.errors import DatabaseUnavailable
from backend.testing.engine import running_engine, take

pytestmark = [pytest.mark.integrated, pytest.mark.anyio]

POOL_SIZE = 4
GENERAL_SHARE = 2  # POOL_SIZE minus the live reserve of two


async def test_a_pool_held_by_catch_up_readers_still_publishes_and_delivers(
    database_url: str,
) -> None:
    async with (
        running_engine(
            database_url, pool_size=POOL_SIZE, pool_acquire_timeout_seconds=0.5
        ) as engine,
        engine.subscribe("live.orders", after="latest") as live,
    ):
        async with AsyncExitStack() as readers:
            # Catch-up readers stuck mid-read hold every general connection.
            for _ in range(GENERAL_SHARE):
                conn = await readers.enter_async_context(engine.pool.acquire())
                await conn.execute("SELECT 1")
            with anyio.fail_after(5), pytest.raises(DatabaseUnavailable):
                async with engine.subscribe("live.orders", after="earliest") as late:
                    await anext(late)
            with anyio.fail_after(5):
                published = [await engine.publish("live.orders", {"n": n}) for n in range(3)]
            delivered = await take(live, 3)
            assert [e.pos for e in delivered] == [e.pos for e in published]
            assert [e.data for e in delivered] == [{"n": 0}, {"n": 1}, {"n": 2}]
        # Once the readers let go, catching up works again.
        async with engine.subscribe("live.orders", after="earliest") as late:
            assert [e.data for e in await take(late, 3)] == [{"n": n} for n in range(3)]
