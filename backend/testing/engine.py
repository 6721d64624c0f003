"""Helpers for tests that drive the engine directly."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio

from backend.core.settings import Settings
from backend.entities.event import Event
from backend.services.engine import Engine


def test_settings(database_url: str, **overrides: Any) -> Settings:
    """Settings with short intervals so failure paths show up within a test's time."""
    values: dict[str, Any] = {
        "database_url": database_url,
        "poll_interval_seconds": 0.5,
        "probe_interval_seconds": 0.5,
        "probe_timeout_seconds": 0.5,
        "retention_interval_seconds": 3600,
    }
    values.update(overrides)
    return Settings(**values)


@asynccontextmanager
async def running_engine(database_url: str, **overrides: Any) -> AsyncIterator[Engine]:
    async with Engine.open(database_url, test_settings(database_url, **overrides)) as engine:
        yield engine


async def take(stream: AsyncIterator[Event], count: int, within: float = 5) -> list[Event]:
    """The next `count` events, or TimeoutError naming how many arrived."""
    got: list[Event] = []
    with anyio.fail_after(within):
        while len(got) < count:
            got.append(await anext(stream))
    return got


async def nothing_within(stream: AsyncIterator[Event], seconds: float) -> bool:
    """True when no event arrives within `seconds`; the stream is finished afterwards."""
    with anyio.move_on_after(seconds):
        await anext(stream)
        return False
    return True
