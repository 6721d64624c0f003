"""Business logic as composable async generators: publish, subscribe, queues, capture.

Applications use `Engine.open(url, settings)` and then `subscribe` / `publish` (module
functions acting on the current engine, or the engine's methods). The stream operators
(`merge`, `batch`, `throttle`, `heartbeat`, `take`, `amap`, and `streams.map` /
`streams.filter`) compose subscriptions and deliveries; docs/python.md shows each in a
runnable example.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from backend.core import streams
from backend.core.filters import Filter
from backend.core.streams import amap, batch, heartbeat, merge, take, throttle
from backend.entities.event import Event
from backend.entities.message import Message
from backend.services.consume import Delivery
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


@asynccontextmanager
async def consume(
    queue: str,
    *,
    prefetch: int = 1,
    lease: float = 30.0,
    read_ahead: int = 0,
    engine: Engine | None = None,
) -> AsyncIterator[AsyncIterator[Delivery]]:
    """Consume `queue` on `engine` (default: the current one).

    Example: `async with consume("jobs", prefetch=4) as deliveries: async for d in deliveries:`
    then `await d.ack()` (or `nack(delay=..., error=...)`, `extend(seconds)`). With
    `read_ahead=N`, up to N more are claimed while you work and handed out as you settle.
    """
    async with (engine or Engine.current()).consume(
        queue, prefetch=prefetch, lease=lease, read_ahead=read_ahead
    ) as it:
        yield it


async def enqueue(
    queue: str,
    data: Any,
    *,
    key: str | None = None,
    delay_seconds: float = 0,
    max_attempts: int = 5,
    engine: Engine | None = None,
) -> Message:
    """Enqueue one message on `engine` (default: the current one); returns it once committed."""
    return await (engine or Engine.current()).enqueue(
        queue, data, key=key, delay_seconds=delay_seconds, max_attempts=max_attempts
    )


__all__ = [
    "Delivery",
    "Engine",
    "Event",
    "Message",
    "amap",
    "batch",
    "consume",
    "enqueue",
    "heartbeat",
    "merge",
    "publish",
    "streams",
    "subscribe",
    "take",
    "throttle",
]
