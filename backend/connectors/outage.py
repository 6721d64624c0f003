"""One account of database outages per process, so an outage reads as a few log lines.

While PostgreSQL is down every background loop (hub, sequencer, listener, reaper,
retention), every request and asyncpg's own pool keep failing and retrying; each used to
log its own warning, about 90 lines and several tracebacks in 14 s. They now report here:
the first failure logs one WARNING, a reminder follows at most every `reminder_seconds`,
and the first success afterwards logs one INFO with the outage's length. Failures that
are not about reaching the database are still logged by their callers, one by one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from backend.connectors.database import CONNECTION_LOST, connect_failure
from backend.core.errors import DatabaseUnavailable

logger = logging.getLogger(__name__)

REMINDER_SECONDS = 30.0
# Connections a pool held across a restart may still fail for a moment after recovery;
# such failures belong to the outage that just ended rather than starting a new one.
SETTLE_SECONDS = 5.0
POOL_LOGGER = "asyncpg.pool"
_UNREACHABLE: tuple[type[BaseException], ...] = (DatabaseUnavailable, *CONNECTION_LOST)


def is_unavailable(exc: BaseException) -> bool:
    """Whether `exc` means the database cannot be reached, rather than a failed statement."""
    if isinstance(exc, _UNREACHABLE):
        return True
    return isinstance(connect_failure(exc), DatabaseUnavailable)


@dataclass
class Outage:
    """Whether the database is reachable, as the process's own attempts have found."""

    reminder_seconds: float = REMINDER_SECONDS
    settle_seconds: float = SETTLE_SECONDS
    clock: Callable[[], float] = time.monotonic
    started: float | None = None
    failures: int = 0
    _reminded: float = field(default=0.0, repr=False)
    _ended: float = field(default=float("-inf"), repr=False)

    def failed(self, source: str, exc: BaseException) -> None:
        """`source` could not reach the database; log only what is news."""
        now = self.clock()
        self.failures += 1
        if self.started is None:
            if now - self._ended < self.settle_seconds:
                logger.debug("%s failed just after the outage: %s", source, exc)
                return
            self.started = self._reminded = now
            self.failures = 1
            logger.warning(
                "database unavailable (%s): %s; retrying quietly until it is back",
                source,
                _describe(exc),
                extra={"action": "db_outage"},
            )
        elif now - self._reminded >= self.reminder_seconds:
            self._reminded = now
            logger.warning(
                "database still unavailable after %.0f s (%d failed attempts): %s",
                now - self.started,
                self.failures,
                _describe(exc),
                extra={"action": "db_outage_continues"},
            )

    def recovered(self) -> None:
        """A database operation succeeded: an outage in progress is over."""
        if self.started is None:
            return
        now = self.clock()
        logger.info(
            "database available again after %.1f s (%d failed attempts)",
            now - self.started,
            self.failures,
            extra={"action": "db_recovered"},
        )
        self.started = None
        self.failures = 0
        self._ended = now


outage = Outage()


def report_failure(log: logging.Logger, what: str, exc: BaseException, *, action: str) -> None:
    """Log that `what` (a background task's step) failed: an unreachable database through
    `outage`, anything else as a WARNING of its own."""
    if is_unavailable(exc):
        outage.failed(what, exc)
    else:
        log.warning("%s failed: %r", what, exc, extra={"action": action})


class PoolFloorFailures(logging.Filter):
    """asyncpg's pool logs a traceback each time it cannot reconnect its minimum size;
    during an outage those are reported to `outage` instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None or not is_unavailable(exc):
            return True
        outage.failed("connection pool", exc)
        return False


def install_pool_filter() -> None:
    """Attach PoolFloorFailures to asyncpg's pool logger (idempotent)."""
    pool_logger = logging.getLogger(POOL_LOGGER)
    if not any(isinstance(f, PoolFloorFailures) for f in pool_logger.filters):
        pool_logger.addFilter(PoolFloorFailures())


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
