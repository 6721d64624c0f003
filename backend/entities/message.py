"""Plain value types of point-to-point queues."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from backend.core import exactjson
from backend.entities.event import format_time


@dataclass(frozen=True, slots=True)
class NewMessage:
    """A message on its way in, validated, with its data encoded once."""

    queue: str
    data_json: bytes
    key: str | None = None
    delay_seconds: float = 0.0
    max_attempts: int = 5


@dataclass(frozen=True, slots=True)
class Message:
    """A message as a consumer holds it; `lease` identifies this delivery for ack/nack/extend.

    `data_json` is compact JSON with every digit of every number (the store makes it so).
    """

    id: int
    queue: str
    data_json: bytes
    key: str | None
    attempt: int
    max_attempts: int
    enqueued_at: datetime
    available_at: datetime
    lease: str | None = None
    lease_until: datetime | None = None
    last_error: str | None = None

    @property
    def data(self) -> Any:
        return exactjson.loads(self.data_json, "the message data")

    def as_dict(self) -> dict[str, Any]:
        """The wire form (`docs/protocol.md`), with `data` as compact JSON like events.

        `data` is an orjson Fragment of `data_json`, spliced as is by whichever encoder
        writes the body.
        """
        body: dict[str, Any] = {
            "id": str(self.id),
            "queue": self.queue,
            "data": orjson.Fragment(self.data_json),
            "key": self.key,
            "attempt": self.attempt,
            "max_attempts": self.max_attempts,
            "enqueued_at": format_time(self.enqueued_at),
            "available_at": format_time(self.available_at),
        }
        if self.lease is not None:
            body["lease"] = self.lease
        if self.lease_until is not None:
            body["lease_until"] = format_time(self.lease_until)
        if self.last_error is not None:
            body["last_error"] = self.last_error
        return body

    def to_json(self) -> bytes:
        return orjson.dumps(self.as_dict())


@dataclass(frozen=True, slots=True)
class QueueStats:
    queue: str
    ready: int
    leased: int
    delayed: int
    dead: int
    oldest_ready_age_seconds: float | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "queue": self.queue,
            "ready": self.ready,
            "leased": self.leased,
            "delayed": self.delayed,
            "dead": self.dead,
            "oldest_ready_age_seconds": self.oldest_ready_age_seconds,
        }
