"""The WebSocket direct writer: frames as the task path would send them, none once the
subscription is cancelled, and the tally the delivered counter is made from."""

from __future__ import annotations

import anyio
import orjson
import pytest

from backend.interface.server.metrics import DirectTally
from backend.interface.stream.encoding import WRITE_BYTES, ws_text_frame
from backend.interface.stream.ws.direct import DirectFrames
from backend.testing.memory_log import MemoryLog

pytestmark = pytest.mark.anyio


class Turns:
    """The connection's turn-taking as the writer sees it."""

    writing = False


def unframe(wire: bytes) -> list[dict[str, object]]:
    """Split unmasked text frames (payloads under 64 KiB) back into their JSON."""
    frames = []
    while wire:
        assert wire[0] == 0x81
        size, start = wire[1], 2
        if size == 126:
            size, start = int.from_bytes(wire[2:4], "big"), 4
        frames.append(orjson.loads(wire[start : start + size]))
        wire = wire[start + size :]
    return frames


async def test_events_go_out_as_event_frames_until_the_subscription_is_cancelled() -> None:
    log = MemoryLog()
    events = [log.append("t", {"n": n, "pad": "x" * 100}) for n in range(3)]
    written: list[bytes] = []

    def write(data: bytes) -> bool:
        written.append(data)
        return True

    scope = anyio.CancelScope()
    tally = DirectTally()
    frames = DirectFrames(write, Turns(), scope, '"s"', tally)
    assert frames(events[:1])
    assert frames(events[1:])
    assert [unframe(w) for w in written] == [
        [{"op": "event", "sub": "s", **events[0].envelope()}],
        [{"op": "event", "sub": "s", **e.envelope()} for e in events[1:]],
    ]
    assert (tally.count, tally.oldest) == (3, events[0])
    scope.cancel()
    assert not frames(events)
    assert len(written) == 2


async def test_refused_writes_are_not_counted() -> None:
    log = MemoryLog()
    tally = DirectTally()
    frames = DirectFrames(lambda _: False, Turns(), anyio.CancelScope(), "1", tally)
    assert not frames([log.append("t", 1)])
    assert (tally.count, tally.oldest) == (0, None)


def test_text_frame_lengths_use_the_short_medium_and_long_forms() -> None:
    assert ws_text_frame(b"x" * 125)[:2] == b"\x81\x7d"
    assert ws_text_frame(b"x" * 126)[:4] == b"\x81\x7e\x00\x7e"
    assert ws_text_frame(b"x" * 65536)[:10] == b"\x81\x7f" + (65536).to_bytes(8, "big")


async def test_a_batch_over_write_bytes_is_left_to_the_task_but_one_big_event_is_not() -> None:
    log = MemoryLog()
    big = [log.append("t", "x" * 20_000) for _ in range(4)]  # about 80 KB together
    written: list[bytes] = []

    def write(data: bytes) -> bool:
        written.append(data)
        return True

    frames = DirectFrames(write, Turns(), anyio.CancelScope(), "1", DirectTally())
    assert not frames(big)
    assert written == []
    assert frames(big[:1])
    assert len(written[0]) > 20_000
    assert sum(len(w) for w in written) <= WRITE_BYTES


async def test_nothing_is_written_while_another_write_holds_the_socket() -> None:
    log = MemoryLog()
    written: list[bytes] = []

    def write(data: bytes) -> bool:
        written.append(data)
        return True

    turns = Turns()
    frames = DirectFrames(write, turns, anyio.CancelScope(), "1", DirectTally())
    turns.writing = True
    assert not frames([log.append("t", 1)])
    turns.writing = False
    assert frames([log.append("t", 2)])
    assert len(written) == 1
