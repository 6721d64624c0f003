"""Plain value types of the event log: events, their ids and resume positions."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Final

from backend.core import exactjson
from backend.core.errors import InvalidCursor

ID_WIDTH: Final = 16
MAX_POSITION: Final = 10**ID_WIDTH - 1


def format_id(pos: int) -> str:
    """Event ids are fixed-width so that string order equals delivery order."""
    return str(pos).zfill(ID_WIDTH)


def parse_id(text: str) -> int:
    """The log position behind an event id; raises `InvalidCursor` for anything else."""
    if not (isinstance(text, str) and text.isascii() and text.isdigit() and len(text) <= ID_WIDTH):
        raise InvalidCursor(f"invalid event id {text!r}: expected up to {ID_WIDTH} digits")
    return int(text)


@lru_cache(maxsize=4096)
def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with microseconds and a Z suffix. It runs three times for every
    queue message sent, mostly on times a batch shares (its enqueue, its claim's lease), so
    answers are remembered: a hit costs a tenth of writing the fields. Equal aware times are
    the same instant, so they share one answer. Written field by field, as %-formatting
    takes 0.6 of `isoformat`'s time here (an f-string 0.85)."""
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    return "%04d-%02d-%02dT%02d:%02d:%02d.%06dZ" % (  # noqa: UP031 - the fastest spelling
        moment.year,
        moment.month,
        moment.day,
        moment.hour,
        moment.minute,
        moment.second,
        moment.microsecond,
    )


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event on its way in: validated, with its data already encoded once."""

    topic: str
    data_json: bytes
    type: str | None = None
    key: str | None = None


@dataclass(slots=True, eq=False)
class Event:
    """A committed, positioned event as subscribers receive it.

    The data stays as the JSON text Postgres returned; the envelope is encoded once and
    shared by every subscriber, and `data` is decoded only when something (a filter,
    Python code) looks at it.
    """

    pos: int
    topic: str
    type: str | None
    key: str | None
    data_json: bytes
    time: datetime
    _data: Any = field(default=None, repr=False)
    _decoded: bool = field(default=False, repr=False)
    _envelope_json: bytes | None = field(default=None, repr=False)
    encoded: dict[str, bytes] = field(default_factory=dict, repr=False)
    """Per-transport encodings of this event, computed once and shared by all subscribers."""

    @property
    def id(self) -> str:
        return format_id(self.pos)

    @property
    def data(self) -> Any:
        if not self._decoded:
            self._data = exactjson.loads(self.data_json, "the event data")
            self._decoded = True
        return self._data

    def envelope(self) -> dict[str, Any]:
        """The wire envelope as a dict (what filters and Python callers see)."""
        return {
            "id": self.id,
            "topic": self.topic,
            "type": self.type,
            "key": self.key,
            "data": self.data,
            "time": format_time(self.time),
        }

    def envelope_json(self) -> bytes:
        """The wire envelope, encoded once per event.

        `data` is re-encoded rather than spliced in: Postgres prints jsonb with spaces, and
        every transport (SSE, WebSocket, JSON pages, the CLI) should show the same compact
        JSON. It goes through exactjson both ways, so numbers keep every digit.
        """
        if self._envelope_json is None:
            # Parsed here and dropped, not kept in `_data`: an event waiting in a slow
            # subscriber's buffer should hold its data once or twice, not three times.
            data = self._data if self._decoded else exactjson.loads(self.data_json)
            self._envelope_json = exactjson.dumps(
                {
                    "id": self.id,
                    "topic": self.topic,
                    "type": self.type,
                    "key": self.key,
                    "data": data,
                    "time": format_time(self.time),
                }
            )
        return self._envelope_json
