"""Publishing: validate, then append with delivery positions.

A publish takes its positions at insert time: one statement (`append_positioned`) takes the
position lock, inserts the events with their positions, moves the head and sends the
wake-up, in one commit. An idempotent publish inserts unpositioned rows inside its key's
transaction instead; right after that commit it runs the sequencer, which stamps them and
reads them back as subscribers will see them (`sequence_and_read`).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Protocol

from backend.connectors.database import Connection, Pool
from backend.connectors.store import log as log_queries
from backend.connectors.store.idempotency import run_once
from backend.core import exactjson
from backend.core.errors import DatabaseUnavailable, EventTooLarge, InvalidEvent
from backend.core.names import validate_name
from backend.entities.event import Event, NewEvent

MAX_TYPE_LENGTH = 200
RESERVED_SEGMENT = "pgcast"
# SSE uses the type as the event name: these would shadow the reset signal or EventSource's
# own `error` event in browsers.
RESERVED_TYPES = frozenset({"error"})
MAX_KEY_LENGTH = 1024


class HandOver(Protocol):
    """Where this process's newly positioned events go: its hub, which hands them out at
    once instead of reading them back or waiting for their NOTIFY."""

    def hand_over(self, events: list[Event]) -> None:
        """Events just committed and positioned, in position order."""

    def expecting_hand_over(self) -> AbstractContextManager[None]:
        """Around the statement that positions events and their hand-over."""


class _Nobody:
    """No hub to hand events to (a publish made outside an engine)."""

    def hand_over(self, events: list[Event]) -> None:
        pass

    def expecting_hand_over(self) -> AbstractContextManager[None]:
        return nullcontext()


NOBODY: HandOver = _Nobody()


def _optional_text(value: object, field: str, limit: int) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidEvent(f"event {field} must be a string or null")
    if not 1 <= len(value) <= limit:
        raise InvalidEvent(f"event {field} must be 1-{limit} characters")
    if not value.isprintable():
        raise InvalidEvent(f"event {field} must not contain control characters")
    return value


def new_event(
    topic: object,
    data: Any,
    *,
    type: object = None,
    key: object = None,
    max_bytes: int,
) -> NewEvent:
    """Validate one event and encode its data once; raises typed errors naming the problem."""
    name = validate_name(topic, "topic")
    if name == RESERVED_SEGMENT or name.startswith(RESERVED_SEGMENT + "."):
        raise InvalidEvent(f"topics under '{RESERVED_SEGMENT}.' are reserved for the server")
    try:
        data_json = exactjson.dumps(data)
    except TypeError as exc:
        raise InvalidEvent(f"event data is not JSON: {exc}") from None
    if exactjson.contains_nul(data_json):
        exactjson.refuse_nul(data, "data")
    if len(data_json) > max_bytes:
        raise EventTooLarge(
            f"event data is {len(data_json)} bytes, over the limit of {max_bytes} bytes"
        )
    kind = _optional_text(type, "type", MAX_TYPE_LENGTH)
    if kind is not None and (kind in RESERVED_TYPES or kind.startswith(RESERVED_SEGMENT + ".")):
        raise InvalidEvent(f"event type {kind!r} is reserved")
    return NewEvent(
        topic=name,
        data_json=data_json,
        type=kind,
        key=_optional_text(key, "key", MAX_KEY_LENGTH),
    )


async def publish_events(
    pool: Pool,
    events: Sequence[NewEvent],
    *,
    recipient: HandOver = NOBODY,
    live: bool = False,
) -> list[Event]:
    """Append `events` atomically; return them with their ids once they are committed.

    `recipient` gets the events, positioned, inside its `expecting_hand_over` around the
    statement (entered once the connection is taken). `live` publishers (group commit) may
    use the connections reserved for the live path.
    """
    if not events:
        return []
    sent = False
    try:
        async with pool.acquire(live=live, stateless=True) as conn:
            # One statement, its own transaction: positions taken, events written, committed.
            sent = True
            with recipient.expecting_hand_over():
                published = await log_queries.append_positioned(conn, events)
                recipient.hand_over(published)
    except DatabaseUnavailable as exc:
        if sent:
            raise DatabaseUnavailable(
                "the database went away during the publish, so whether it was stored is not"
                " known; retry with an Idempotency-Key to avoid copies"
            ) from exc
        raise DatabaseUnavailable(f"nothing was published: {exc.message}") from exc
    return published


async def publish_idempotent(
    pool: Pool,
    topic: str,
    key: str,
    digest: bytes,
    events: Sequence[NewEvent],
    *,
    recipient: HandOver = NOBODY,
) -> tuple[list[Event], bool]:
    """Publish once per (topic, key); a replay returns the original events and stores nothing.

    Returns the events and whether this was a replay. Raises `Conflict` when the key was
    used with a different body. `recipient` as for `publish_events`.
    """

    async def store(conn: Connection) -> list[int]:
        return await log_queries.insert_events(conn, events)

    seqs, replayed = await run_once(pool, f"topic:{topic}", key, digest, store)
    # Our rows are committed (in the key's transaction): the sequencer stamps them and reads
    # them back as delivered, in one round trip on a connection that needs no reset.
    async with pool.acquire(stateless=True) as conn:
        with recipient.expecting_hand_over():
            published = await log_queries.sequence_and_read(conn, seqs)
            if published:
                recipient.hand_over(published)
            return published, replayed
