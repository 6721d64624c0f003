"""Parsing and validating what clients send: bodies, query parameters, headers.

Every problem becomes a typed error naming the offending input; nothing here touches the
database.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from starlette.requests import ClientDisconnect, Request

from backend.core import exactjson
from backend.core.errors import InvalidCursor, InvalidEvent
from backend.entities.event import parse_id
from backend.interface.http.errors import RequestError
from backend.services.subscribe import EARLIEST, LATEST

MAX_BATCH = 1000
SMALL_BODY_BYTES = 64 * 1024
"""The limit for bodies that carry a token, a lease or options, never event data."""
N = TypeVar("N", int, float)
EVENT_FIELDS = frozenset({"data", "type", "key"})


def parse_after(value: object) -> str | int:
    """`earliest`, `latest` or an event id (returned as its position)."""
    if value is None or value == "":
        return LATEST
    if value in (EARLIEST, LATEST):
        return str(value)
    if not isinstance(value, str):
        raise InvalidCursor("after must be 'earliest', 'latest' or an event id")
    return parse_id(value)


def wants_sse(request: Request) -> bool:
    return "text/event-stream" in request.headers.get("accept", "")


def has_body(request: Request) -> bool:
    """Whether the request says it carries a body (a length above 0, or chunks)."""
    length = request.headers.get("content-length")
    return length != "0" and (length is not None or "transfer-encoding" in request.headers)


def is_json_media_type(content_type: str | None) -> bool:
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


async def read_json(request: Request, max_bytes: int) -> Any:
    """The request body as JSON: 415 unless JSON, 413 beyond `max_bytes`, 400 if malformed,
    nested too deep or holding a NUL (see `exactjson.loads`)."""
    if not is_json_media_type(request.headers.get("content-type")):
        raise RequestError(415, "unsupported_media_type", "the body must be application/json")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise RequestError(413, "body_too_large", f"the body is over {max_bytes} bytes")
    return exactjson.loads(await _body(request, max_bytes))


async def _body(request: Request, max_bytes: int) -> bytes:
    """The body's bytes from the ASGI messages, refused once over `max_bytes`. Read here
    rather than through `Request.stream()`: most bodies come in one message, which is
    then used as it is, with no generator and no copy."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > max_bytes:
            raise RequestError(413, "body_too_large", f"the body is over {max_bytes} bytes")
        if not message.get("more_body", False):
            return b"".join([*chunks, chunk]) if chunks else chunk
        chunks.append(chunk)


def event_items(
    body: Any, noun: str = "event", fields: frozenset[str] = EVENT_FIELDS
) -> list[Mapping[str, Any]]:
    """One object or an array of 1-1000 objects, each with `data` and only known fields."""
    items = body if isinstance(body, list) else [body]
    if not items:
        raise InvalidEvent(f"the array must hold at least one {noun}")
    if len(items) > MAX_BATCH:
        raise RequestError(413, "too_many_events", f"at most {MAX_BATCH} {noun}s per request")
    for index, item in enumerate(items):
        where = f"{noun} {index}" if isinstance(body, list) else noun
        if not isinstance(item, dict):
            raise InvalidEvent(f"{where} must be a JSON object")
        if "data" not in item:
            raise InvalidEvent(f"{where} has no 'data' field")
        unknown = sorted(set(item) - fields)
        if unknown:
            raise InvalidEvent(f"{where} has unknown field(s): {', '.join(unknown)}")
    return items


def int_param(params: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    return _number_param(params, name, default, low, high, int, "an integer")


def float_param(
    params: Mapping[str, str], name: str, default: float, low: float, high: float
) -> float:
    return _number_param(params, name, default, low, high, float, "a number")


def _number_param(
    params: Mapping[str, str],
    name: str,
    default: N,
    low: N,
    high: N,
    cast: Callable[[str], N],
    noun: str,
) -> N:
    """A numeric query parameter within [low, high]; 400 naming it otherwise."""
    raw = params.get(name)
    if raw is None:
        return default
    try:
        value = cast(raw)
    except ValueError:
        raise RequestError(400, "invalid_parameter", f"{name} must be {noun}") from None
    if not low <= value <= high:
        raise RequestError(400, "invalid_parameter", f"{name} must be between {low} and {high}")
    return value
