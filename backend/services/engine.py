"""The streaming engine of one process: pool, LISTEN connection, hub, sequencer, retention.

`Engine.open()` starts everything in one task group and stops it when the block ends.
`publish` and `subscribe` are the Python API the transports and applications use.
"""

from __future__ import annotations

import contextvars
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio

from backend.connectors.database import Pool, open_pool
from backend.connectors.listener import Listener
from backend.connectors.outage import install_pool_filter
from backend.connectors.store import log as log_queries
from backend.connectors.store.log import PostgresLog, TopicSummary
from backend.connectors.store.warm import warm
from backend.core.concurrency import unwrap_single_error
from backend.core.filters import Filter
from backend.core.names import Pattern
from backend.core.settings import Settings
from backend.entities.event import Event, NewEvent
from backend.entities.message import Message
from backend.services.capture import reconcile as reconcile_captures
from backend.services.consume import Delivery, consume
from backend.services.group_commit import GroupCommitter
from backend.services.hub import Hub
from backend.services.pages import EventPage, read_page
from backend.services.publish import new_event, publish_idempotent
from backend.services.queues import QUEUES_CHANNEL, Queues
from backend.services.retention import Retention
from backend.services.sequencer import Sequencer
from backend.services.subscribe import (
    LATEST,
    PatternsLike,
    Subscription,
    open_subscription,
    start_subscription,
)
from backend.services.topics import list_topics

EVENTS_CHANNEL = "pgcast_events"
PENDING_CHANNEL = "pgcast_pending"

_current: contextvars.ContextVar[Engine] = contextvars.ContextVar("pgcast_engine")


def _head_hint(payload: str) -> int | None:
    return int(payload) if payload.isdigit() else None


def _wake_all(hub: Hub, sequencer: Sequencer) -> None:
    """After (re)connecting, re-read and re-sequence: wake-ups may have been missed."""
    hub.wake()
    sequencer.wake()


@dataclass(eq=False)
class Engine:
    settings: Settings
    pool: Pool
    hub: Hub
    listener: Listener
    sequencer: Sequencer
    retention: Retention
    committer: GroupCommitter
    queues: Queues

    @classmethod
    @asynccontextmanager
    async def open(cls, url: str, settings: Settings) -> AsyncIterator[Engine]:
        """Run the engine for the duration of the block; it is also the current engine."""
        install_pool_filter()
        async with open_pool(
            url,
            size=settings.pool_size,
            acquire_timeout=settings.pool_acquire_timeout_seconds,
            warm=warm,
        ) as pool:
            hub = Hub(
                PostgresLog(pool),
                buffer_size=settings.subscriber_buffer,
                read_batch=settings.read_batch,
                poll_interval=settings.poll_interval_seconds,
            )
            sequencer = Sequencer(
                pool,
                hub,
                poll_interval=settings.poll_interval_seconds,
                max_interval=settings.sequencer_max_spacing_ms / 1000,
                hand_limit=settings.read_batch,
            )
            queues = Queues(
                pool,
                hub.wake,
                max_bytes=settings.max_event_bytes,
                backoff_base=settings.queue_backoff_base_seconds,
                backoff_cap=settings.queue_backoff_cap_seconds,
                reap_interval=settings.queue_reap_interval_seconds,
                poll_interval=settings.poll_interval_seconds,
                retention=settings.retention,
            )
            listener = Listener(
                url,
                {
                    EVENTS_CHANNEL: lambda payload, sender: hub.wake(
                        _head_hint(payload), ours=pool.owns(sender)
                    ),
                    PENDING_CHANNEL: lambda _payload, _sender: sequencer.wake(),
                    QUEUES_CHANNEL: lambda payload, _sender: queues.waker.wake(payload),
                },
                on_connect=lambda: _wake_all(hub, sequencer),
                probe_interval=settings.probe_interval_seconds,
                probe_timeout=settings.probe_timeout_seconds,
            )
            retention = Retention(
                pool,
                settings.retention,
                interval=settings.retention_interval_seconds,
                idempotency_ttl=settings.idempotency_ttl,
            )
            committer = GroupCommitter(
                pool,
                hub,
                max_requests=settings.group_commit_max_requests,
                max_wait=settings.group_commit_wait_ms / 1000,
            )
            engine = cls(settings, pool, hub, listener, sequencer, retention, committer, queues)
            async with pool.acquire() as conn:
                await log_queries.set_max_event_bytes(conn, settings.max_event_bytes)
            await reconcile_captures(pool, settings.capture_tables)
            token = _current.set(engine)
            try:
                with unwrap_single_error():
                    async with anyio.create_task_group() as tg:
                        await tg.start(hub.run)
                        tg.start_soon(listener.run)
                        tg.start_soon(sequencer.run)
                        tg.start_soon(retention.run)
                        tg.start_soon(committer.run)
                        tg.start_soon(queues.run)
                        tg.start_soon(pool.prefill)
                        try:
                            yield engine
                        finally:
                            hub.close()
                            tg.cancel_scope.cancel()
            finally:
                _current.reset(token)

    @staticmethod
    def current() -> Engine:
        """The engine opened by the innermost `Engine.open()` in this context."""
        try:
            return _current.get()
        except LookupError:
            raise RuntimeError(
                "no pgcast engine is running: use `async with Engine.open(...)`"
            ) from None

    def event(
        self, topic: object, data: Any, *, type: object = None, key: object = None
    ) -> NewEvent:
        """Validate one event against this engine's limits."""
        return new_event(topic, data, type=type, key=key, max_bytes=self.settings.max_event_bytes)

    async def publish_many(self, events: Sequence[NewEvent]) -> list[Event]:
        """Publish validated events atomically (group-committed with concurrent publishes)."""
        return await self.committer.publish(events)

    async def publish_once(
        self, topic: str, key: str, digest: bytes, events: Sequence[NewEvent]
    ) -> tuple[list[Event], bool]:
        """Idempotent publish: (events, replayed). Raises Conflict on a reused key."""
        return await publish_idempotent(self.pool, topic, key, digest, events, recipient=self.hub)

    async def read_page(
        self,
        patterns: Sequence[Pattern],
        after: str | int,
        filter: Filter | None,
        limit: int,
        wait: float = 0,
    ) -> EventPage:
        """One page of matching events after `after`, long-polling up to `wait` seconds."""
        return await read_page(self.hub, patterns, after, filter, limit, wait)

    async def topics(self, pattern: Pattern, after: str, limit: int) -> list[TopicSummary]:
        """Topics of the retained log matching `pattern`, by name, after the name `after`."""
        return await list_topics(self.pool, pattern, after, limit)

    async def publish(
        self, topic: str, data: Any, *, type: str | None = None, key: str | None = None
    ) -> Event:
        """Publish one event; returns it once committed."""
        (event,) = await self.publish_many([self.event(topic, data, type=type, key=key)])
        return event

    @asynccontextmanager
    async def subscribe(
        self,
        patterns: PatternsLike,
        after: str | int = LATEST,
        filter: str | Filter | None = None,
    ) -> AsyncIterator[AsyncIterator[Event]]:
        """Events matching `patterns` after `after`: catch-up, then live."""
        async with open_subscription(self.hub, patterns, after, filter) as (_, stream):
            yield stream

    @asynccontextmanager
    async def consume(
        self, queue: str, *, prefetch: int = 1, lease: float = 30.0, read_ahead: int = 0
    ) -> AsyncIterator[AsyncIterator[Delivery]]:
        """Leased deliveries from `queue`; unsettled ones go back to the queue on exit.
        `read_ahead`: how many to hold ready beyond `prefetch` (see `consume.Consumer`)."""
        async with consume(
            self.queues, queue, prefetch=prefetch, lease=lease, read_ahead=read_ahead
        ) as deliveries:
            yield deliveries

    async def enqueue(
        self,
        queue: str,
        data: Any,
        *,
        key: str | None = None,
        delay_seconds: float = 0,
        max_attempts: int = 5,
    ) -> Message:
        """Enqueue one message; returns it once committed."""
        message = self.queues.message(
            queue, data, key=key, delay_seconds=delay_seconds, max_attempts=max_attempts
        )
        (stored,) = await self.queues.enqueue([message])
        return stored

    async def start_subscription(
        self,
        patterns: PatternsLike,
        after: str | int = LATEST,
        filter: str | Filter | None = None,
    ) -> Subscription:
        """Like `subscribe`, as the subscription itself, for transports: iterate its
        `batches` and `close` it when done."""
        return await start_subscription(self.hub, patterns, after, filter)
