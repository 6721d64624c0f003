"""Wire encodings of events, built once per event and shared by every subscriber."""

from __future__ import annotations

from collections.abc import Iterable

import orjson

from backend.core.errors import CursorExpired
from backend.entities.event import Event

RESET_EVENT = "pgcast.reset"
ENCODINGS_KEPT = 8  # per event: SSE frame and chunk, and a few WebSocket subscription ids
WRITE_BYTES = 64 * 1024
"""The most one write of events puts into a socket's buffer: a stream's task splits larger
batches and waits for the client between the parts, and the hub leaves them to the task.
So a client that stops reading holds at most its transport's high-water mark plus this."""


def sse_frame(event: Event) -> bytes:
    """`id:`, `event:` (type or `message`) and `data:` (the envelope) of one SSE event."""
    frame = event.encoded.get("sse")
    if frame is None:
        kind = event.type or "message"
        frame = b"id: %s\nevent: %s\ndata: %s\n\n" % (
            event.id.encode(),
            kind.encode(),
            event.envelope_json(),
        )
        event.encoded["sse"] = frame
    return frame


def http_chunk(data: bytes) -> bytes:
    """`data` as one chunk of an HTTP/1.1 chunked body."""
    return b"%x\r\n%b\r\n" % (len(data), data)


def sse_chunk(event: Event) -> bytes:
    """The event's SSE frame as a body chunk, for writing straight to the connection."""
    chunk = event.encoded.get("sse-chunk")
    if chunk is None:
        chunk = event.encoded["sse-chunk"] = http_chunk(sse_frame(event))
    return chunk


def sse_chunks(events: list[Event]) -> bytes | None:
    """The events' chunks as one write, or None when that is over WRITE_BYTES."""
    return one_write([sse_chunk(event) for event in events])


def reset_payload(exc: CursorExpired) -> dict[str, object]:
    return {"oldest": exc.oldest, "reason": exc.reason, "message": exc.message}


def sse_reset(exc: CursorExpired) -> bytes:
    """The in-band reset: readable by native EventSource (`addEventListener("pgcast.reset")`)."""
    return b"event: %s\ndata: %s\n\n" % (RESET_EVENT.encode(), orjson.dumps(reset_payload(exc)))


def sse_comment(text: str) -> bytes:
    return b": " + text.replace("\n", " ").encode() + b"\n\n"


def sse_retry(milliseconds: int) -> bytes:
    return b"retry: %d\n\n" % milliseconds


def ws_event_frame(sub_text: str, event: Event) -> bytes:
    """`{"op":"event","sub":S, ...envelope}` spliced from the envelope's JSON, which is
    encoded once per event and shared by every WebSocket subscriber."""
    return b'{"op":"event","sub":' + sub_text.encode() + b"," + event.envelope_json()[1:]


def one_write(parts: list[bytes]) -> bytes | None:
    """`parts` joined into one write, or None when that is over WRITE_BYTES."""
    if sum(map(len, parts)) > WRITE_BYTES:
        return None
    return b"".join(parts)


class WsEventWire:
    """The `event` frames of one subscription id as unmasked WebSocket text frames, each
    built once per event and id and kept with the event (clients mostly use the same
    few ids, so one build serves many subscribers). An event keeps at most
    ENCODINGS_KEPT encodings: ids chosen per client (UUIDs) are built each time instead
    of growing every event by one frame per subscriber."""

    __slots__ = ("head", "key")

    def __init__(self, sub_text: str) -> None:
        self.key = "ws " + sub_text
        self.head = b'{"op":"event","sub":' + sub_text.encode() + b","

    def __call__(self, event: Event) -> bytes:
        encoded = event.encoded
        wire = encoded.get(self.key)
        if wire is None:
            wire = ws_text_frame(self.head + event.envelope_json()[1:])
            if len(encoded) < ENCODINGS_KEPT:
                encoded[self.key] = wire
        return wire


def ws_text_frame(payload: bytes) -> bytes:
    """A final, unmasked text frame (what a server sends)."""
    size = len(payload)
    if size < 126:
        return b"\x81" + bytes((size,)) + payload
    if size < 65536:
        return b"\x81\x7e" + size.to_bytes(2, "big") + payload
    return b"\x81\x7f" + size.to_bytes(8, "big") + payload


def envelopes_json(events: Iterable[Event]) -> bytes:
    """A JSON array of envelopes from their shared encodings."""
    return b"[" + b",".join(e.envelope_json() for e in events) + b"]"
