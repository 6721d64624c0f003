"""The process's single LISTEN connection.

A pooled connection cannot hold LISTEN (the pool's reset runs `UNLISTEN *`), so this is a
dedicated asyncpg connection. Notifications are only wake-up hints: after every (re)connect
we LISTEN first and then call `on_connect`, so the caller re-reads from its last position
and nothing committed in between is missed. A periodic probe with a timeout catches
half-open connections that would otherwise go silent while looking healthy.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio

from backend.connectors.database import (
    CANNOT_CONNECT,
    LISTENER_APPLICATION_NAME,
    Connection,
    connect,
)
from backend.connectors.outage import outage, report_failure
from backend.core.errors import DatabaseUnavailable

logger = logging.getLogger(__name__)

Handler = Callable[[str, int], None]
"""Called with a notification's payload and the server PID of the session that sent it."""
INITIAL_BACKOFF = 0.05
_CONNECTION_LOST: tuple[type[BaseException], ...] = (*CANNOT_CONNECT, DatabaseUnavailable)


@dataclass
class Listener:
    """Keeps one LISTEN connection alive and reports its health."""

    url: str
    handlers: Mapping[str, Handler]
    on_connect: Callable[[], None]
    probe_interval: float = 5.0
    probe_timeout: float = 2.0
    max_backoff: float = 5.0
    connected: bool = False
    reconnects: int = 0
    last_probe_ok: float = 0.0
    backend_pid: int | None = None
    _ever_connected: bool = field(default=False, repr=False)
    _established: bool = field(default=False, repr=False)

    @property
    def healthy(self) -> bool:
        """Connected, and the last probe answered within two probe intervals."""
        return self.connected and time.monotonic() - self.last_probe_ok < 2 * self.probe_interval

    async def run(self) -> None:
        """Connect, listen and probe until cancelled; reconnect with jittered backoff.

        The backoff grows only while reconnecting fails: a session that got as far as
        listening starts the next wait from the beginning again.
        """
        backoff = INITIAL_BACKOFF
        while True:
            self._established = False
            try:
                await self._session()
            except _CONNECTION_LOST as exc:
                outage.failed("listen connection", exc)
            except Exception as exc:  # noqa: BLE001 - e.g. the database refusing connections
                report_failure(logger, "listen connection", exc, action="listener_failed")
            self.connected = False
            self.reconnects += 1
            if self._established:
                backoff = INITIAL_BACKOFF
            await anyio.sleep(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, self.max_backoff)

    async def _session(self) -> None:
        conn = await connect(self.url, application_name=LISTENER_APPLICATION_NAME)
        lost = anyio.Event()
        try:
            conn.add_termination_listener(lambda _conn: lost.set())
            for channel, handler in self.handlers.items():
                await conn.add_listener(channel, self._dispatch(handler))
            self.backend_pid = conn.get_server_pid()
            self.connected = True
            self._established = True
            self.last_probe_ok = time.monotonic()
            action = "listener_reconnected" if self._ever_connected else "listener_connected"
            level = logging.DEBUG if self._ever_connected else logging.INFO
            self._ever_connected = True
            logger.log(level, "listening for wake-ups", extra={"action": action})
            outage.recovered()
            self.on_connect()
            await self._probe_until_lost(conn, lost)
        finally:
            self.connected = False
            conn.terminate()

    async def _probe_until_lost(self, conn: Connection, lost: anyio.Event) -> None:
        while True:
            with anyio.move_on_after(self.probe_interval):
                await lost.wait()
            if lost.is_set():
                raise DatabaseUnavailable("the LISTEN connection was closed by the server")
            with anyio.fail_after(self.probe_timeout):
                await conn.fetchval("SELECT 1")
            self.last_probe_ok = time.monotonic()

    @staticmethod
    def _dispatch(handler: Handler) -> Callable[[Any, int, str, object], None]:
        def callback(_conn: Any, pid: int, _channel: str, payload: object) -> None:
            handler(str(payload), pid)

        return callback
