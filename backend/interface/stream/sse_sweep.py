"""One timer per process for every live SSE stream: heartbeats, stalled clients, farewells.

An idle subscriber should cost little more than its socket, so a stream owns no task and
no timer of its own. This sweep looks at every stream a few times per heartbeat: it pokes
the ones that have written nothing for a heartbeat (each then checks that its client is
still there and writes a comment; `reap` pokes them all at once when a slot is needed),
drops the client of a write that has made no progress for
SEND_TIMEOUT, and ends sessions whose token expired or whose server is shutting down (the
stream then writes the farewell itself; a server that is not our runner is noticed at the
next sweep). Pokes go out in slices so that a heartbeat due on
thousands of streams at once never holds the loop for long.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import anyio
import anyio.lowlevel
from sse_starlette.sse import AppStatus

from backend.entities.event import Event
from backend.interface.server.metrics import DirectTally
from backend.interface.server.protocols import ChunkWriter
from backend.interface.stream.encoding import sse_chunk, sse_chunks
from backend.interface.stream.session import Farewell, Session
from backend.interface.stream.trim import TableSource, Trimmer

logger = logging.getLogger(__name__)

SWEEPS_PER_INTERVAL = 4  # heartbeats and stalls are noticed within 1.25 of their interval
POKE_SLICE = 256
REAP_WAIT_SECONDS = 0.05


class LiveStream:
    """What the sweep knows of one open stream; `written_at` is the last write progress.

    With a `write` (pgcast's server's direct chunk writer) the stream is also the
    session's sink: the hub writes live events through `deliver` while the stream's task
    is idle, and a stalled stream is ended by dropping its connection, which releases the
    write and tells the stream (`lost`). Under another server the stream's scope is
    cancelled instead (`cancel`, which costs every stream about 0.6 KiB).
    """

    __slots__ = (
        "cancel",
        "expires_at",
        "probed_at",
        "session",
        "tally",
        "write",
        "writing",
        "written_at",
    )

    def __init__(
        self,
        session: Session,
        expires_at: float | None,
        write: ChunkWriter | None = None,
        tally: DirectTally | None = None,
    ) -> None:
        self.session = session
        self.expires_at = expires_at
        self.write = write
        self.tally = tally
        self.cancel = anyio.CancelScope() if write is None else None
        self.writing = False
        self.written_at = self.probed_at = time.monotonic()

    def lost(self) -> None:
        """The server saw the client's connection close: end the stream now, which frees
        its slot, rather than at its next heartbeat. A write in progress returns at once
        (the server drops writes to a closed connection)."""
        self.session.end(Farewell.GONE)

    def stalled(self) -> None:
        """A write made no progress for SEND_TIMEOUT: drop the client."""
        if self.write is not None:
            self.write.abort()
        elif self.cancel is not None:
            self.cancel.cancel()

    def deliver(self, events: list[Event]) -> bool:
        """Write `events` now, unless the socket is backed up or the batch is over
        WRITE_BYTES (False: the hub then buffers them for the task, which writes them in
        parts as the client reads). The hub offers a batch only while the stream's task
        waits for one, so the task is never mid-write here."""
        write = self.write
        if write is None:
            return False
        body = sse_chunk(events[0]) if len(events) == 1 else sse_chunks(events)
        if body is None or not write(body):
            return False
        self.written_at = time.monotonic()
        if self.tally is not None:
            self.tally.add(events)
        return True


@dataclass(eq=False)
class SseSweep:
    """The open streams of this process and the one task that looks after them."""

    heartbeat: float
    send_timeout: float
    stopping: anyio.Event
    tables: tuple[TableSource, ...] = ()
    """Where other sets and dicts that grow with the connections are, compacted at each
    trim."""
    _streams: set[LiveStream] = field(default_factory=set)
    _next_expiry: float = math.inf
    _nap: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    _reaping: anyio.Event | None = None
    _trim: Trimmer = field(init=False)

    def __post_init__(self) -> None:
        self._trim = Trimmer(lambda: (self._streams,), *self.tables)

    def shutting_down(self) -> bool:
        """Our runner's signal, or sse-starlette's flag, which it sets when any uvicorn
        server is asked to exit (pgcast mounted in a host app under plain uvicorn)."""
        return self.stopping.is_set() or AppStatus.should_exit

    def add(self, stream: LiveStream) -> None:
        self._streams.add(stream)
        self._trim.opened(len(self._streams))
        if self.shutting_down():
            stream.session.end(Farewell.SHUTDOWN)
        elif stream.expires_at is not None and stream.expires_at < self._next_expiry:
            self._next_expiry = stream.expires_at
            self._nap.cancel()

    def discard(self, stream: LiveStream) -> None:
        self._streams.discard(stream)

    async def reap(self) -> None:
        """Have every idle stream check its client now, and give them a moment to end.

        Run when the streaming slots are all taken: a client that left is otherwise
        noticed at its next heartbeat (under pgcast's own server, at once: see
        `LiveStream.lost`), and its slot should not wait that long. One reap at a time:
        callers that come during a reap wait for it rather than start another.
        """
        if self._reaping is not None:
            await self._reaping.wait()
            return
        self._reaping = reaping = anyio.Event()
        try:
            await self._poke([stream for stream in self._streams if not stream.writing])
            await anyio.sleep(REAP_WAIT_SECONDS)
        finally:
            self._reaping = None
            reaping.set()

    async def run(self) -> None:
        """Sweep every fraction of the shorter interval, at each expiry and at shutdown."""
        period = min(self.heartbeat, self.send_timeout) / SWEEPS_PER_INTERVAL
        while True:
            with anyio.CancelScope() as self._nap:
                with anyio.move_on_after(max(0.0, min(period, self._next_expiry - time.time()))):
                    await self.stopping.wait()
            await self._sweep()
            if self.shutting_down():
                await anyio.sleep(period)

    async def _sweep(self) -> None:
        now = time.monotonic()
        wall = time.time()
        stopping = self.shutting_down()
        self._next_expiry = math.inf
        due: list[LiveStream] = []
        for stream in list(self._streams):
            expires_at = stream.expires_at
            if stopping:
                stream.session.end(Farewell.SHUTDOWN)
            elif expires_at is not None:
                if wall >= expires_at:
                    stream.session.end(Farewell.EXPIRED)
                else:
                    self._next_expiry = min(self._next_expiry, expires_at)
            if stream.writing:
                if now - stream.written_at >= self.send_timeout:
                    logger.info("closed a stalled SSE client", extra={"action": "send_timeout"})
                    stream.stalled()
            elif now - stream.written_at >= self.heartbeat:
                due.append(stream)
        self._trim.note(len(self._streams))
        await self._poke(due)

    @staticmethod
    async def _poke(streams: list[LiveStream]) -> None:
        for count, stream in enumerate(streams, 1):
            stream.session.poke()
            if count % POKE_SLICE == 0:
                await anyio.lowlevel.checkpoint()
