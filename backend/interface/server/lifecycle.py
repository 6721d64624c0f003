"""Process lifecycle shared by the server runner and the streaming routes."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import anyio

from backend.core.compaction import Table
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
    server_tables: Callable[[], Iterable[Table]] = tuple
    """The HTTP server's sets of connections and tasks (our runner's uvicorn server sets
    it), which the sweeps compact after a crowd has left."""
    _idle: anyio.Event = field(default_factory=anyio.Event)

    def begin_shutdown(self) -> None:
        self.shutting_down.set()

    def stream_opened(self) -> None:
        """Count one more open stream (a WebSocket, `Connection.open`)."""
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
