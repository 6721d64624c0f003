"""Process lifecycle shared by the server runner and the streaming routes."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import TracebackType

import anyio

from backend.core.errors import PgcastError


@dataclass
class Lifecycle:
    """`shutting_down` is set as soon as the process is asked to stop.

    WebSockets register while they run so the runner can let them close with 1001 before
    uvicorn's own shutdown fails every open socket with 1012. (SSE needs no such wait:
    uvicorn lets an HTTP response in progress finish.)
    """

    shutting_down: anyio.Event = field(default_factory=anyio.Event)
    open_streams: int = 0
    startup_error: PgcastError | None = None
    _idle: anyio.Event = field(default_factory=anyio.Event)

    def begin_shutdown(self) -> None:
        self.shutting_down.set()

    def stream(self) -> OpenStream:
        """Count one open stream for as long as the block runs."""
        return OpenStream(self)

    def stream_opened(self) -> None:
        """Count one more open stream (`stream()` does it for a block)."""
        self.open_streams += 1

    def stream_closed(self) -> None:
        """Count one stream fewer."""
        self.open_streams -= 1
        if not self.open_streams:
            self._idle.set()

    async def streams_closed(self) -> None:
        """Return once no stream is open."""
        while self.open_streams:
            self._idle = anyio.Event()
            await self._idle.wait()


class OpenStream:
    """`Lifecycle.stream()`'s block: a class rather than a generator, because every open
    stream holds one (a generator-based context manager costs about 0.6 KiB)."""

    __slots__ = ("lifecycle",)

    def __init__(self, lifecycle: Lifecycle) -> None:
        self.lifecycle = lifecycle

    def __enter__(self) -> None:
        self.lifecycle.stream_opened()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.lifecycle.stream_closed()
