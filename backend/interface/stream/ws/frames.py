"""Parsing and checking client frames: JSON objects with an `op` and its fields."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from backend.core import exactjson
from backend.core.errors import PgcastError

# Close codes pgcast sends (RFC 6455, 7.4.1).
GOING_AWAY = 1001
POLICY_VIOLATION = 1008
INTERNAL_ERROR = 1011
TRY_AGAIN_LATER = 1013

SubId = str | int
Frame = dict[str, Any]


class FrameError(PgcastError):
    """A client frame the protocol cannot accept; `code` goes into the error frame."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def parse(text: str | None) -> Frame:
    """The frame a text message holds; binary messages and non-objects are refused."""
    if text is None:
        raise FrameError("invalid_frame", "frames must be text, not binary")
    frame = exactjson.loads(text, "the frame", allow_nul=True)  # refused once echoed
    if not isinstance(frame, dict):
        raise FrameError("invalid_frame", "a frame must be a JSON object")
    return frame


def is_auth_frame(text: str | None) -> bool:
    """Whether a message is an `auth` frame: the only one a socket without a token may send."""
    try:
        frame = exactjson.loads(text, "the frame") if text is not None else None
    except PgcastError:
        return False
    return isinstance(frame, dict) and frame.get("op") == "auth"


def required(frame: Frame, name: str) -> Any:
    if name not in frame:
        raise FrameError("invalid_frame", f"{frame['op']} needs '{name}'")
    return frame[name]


def sub_id(frame: Frame) -> SubId:
    value = required(frame, "id")
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise FrameError("invalid_frame", "id must be a string or an integer")
    return value


def is_scalar(value: object) -> bool:
    return value is None or isinstance(value, str | int | float | Decimal)
