"""Business logic as composable async generators: publish, subscribe, queues, capture.

Applications use `Engine.open(url, settings)` and then `subscribe` / `publish` (module
functions acting on the current engine, or the engine's methods).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from backend.core.filters import Filter
from backend.entities.event import Event
from backend.services.engine import Engine
from backend.services.subscribe import LATEST, PatternsLike


@asynccontextmanager
async def subscribe(
    patterns: PatternsLike,
    after: str | int = LATEST,
    filter: str | Filter | None = None,
    *,
    engine: Engine | None = None,
) -> AsyncIterator[AsyncIterator[Event]]:
    """Subscribe on `engine` (default: the current one).

    Example: `async with subscribe("orders.>") as events: async for event in events: ...`
    """
    async with (engine or Engine.current()).subscribe(patterns, after, filter) as events:
        yield events


async def publish(
    topic: str,
    data: Any,
    *,
    type: str | None = None,
    key: str | None = None,
    engine: Engine | None = None,
) -> Event:
    """Publish one event on `engine` (default: the current one); returns it once committed."""
    return await (engine or Engine.current()).publish(topic, data, type=type, key=key)


__all__ = ["Engine", "Event", "publish", "subscribe"]
