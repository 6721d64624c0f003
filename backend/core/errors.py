"""Typed public errors.

Every error a caller can act on has its own class with a stable `code`; the transports
map them to HTTP statuses, WebSocket error frames and CLI exit codes in one place.
"""

from __future__ import annotations


class PgcastError(Exception):
    """Base of every error pgcast reports to its users."""

    code = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(PgcastError):
    """A setting is missing or malformed; start-up stops."""

    code = "bad_config"


class InvalidName(PgcastError):
    """A topic, queue name or subscription pattern breaks the naming rules."""

    code = "invalid_topic"


class TooManyPatterns(PgcastError):
    """A subscription names more topic patterns than MAX_PATTERNS allows."""

    code = "too_many_patterns"


class InvalidQueueName(InvalidName):
    """A queue name breaks the naming rules."""

    code = "invalid_queue"


class InvalidFilter(PgcastError):
    """A filter expression cannot be parsed."""

    code = "invalid_filter"


class InvalidCursor(PgcastError):
    """A resume position is not an event id, `earliest` or `latest`."""

    code = "invalid_cursor"


class InvalidJson(PgcastError):
    """A body or frame is not JSON, or is nested deeper than 1,024 levels."""

    code = "invalid_json"


class InvalidEvent(PgcastError):
    """An event to publish is malformed (bad field type, not JSON)."""

    code = "invalid_event"


class EventTooLarge(PgcastError):
    """An event's encoded data exceeds MAX_EVENT_BYTES."""

    code = "event_too_large"


class CursorExpired(PgcastError):
    """The resume position is older than the oldest retained event, or unknown to this log.

    The stream cannot continue gap-free; the caller learns the oldest id still available.
    """

    code = "cursor_expired"

    def __init__(self, message: str, *, oldest: str | None, reason: str) -> None:
        super().__init__(message)
        self.oldest = oldest
        self.reason = reason


class DatabaseUnavailable(PgcastError):
    """Postgres cannot be reached; nothing was committed."""

    code = "database_unavailable"


class ShuttingDown(PgcastError):
    """This process is stopping and did not take the request on; nothing was committed."""

    code = "shutting_down"


class Conflict(PgcastError):
    """The request contradicts stored state (idempotency key reuse, stale lease)."""

    code = "conflict"


class NotFound(PgcastError):
    """The named resource does not exist."""

    code = "not_found"


class CaptureError(PgcastError):
    """A table cannot be captured (missing, not a table, no primary key, unknown column)."""

    code = "invalid_capture_target"


class Unauthorized(PgcastError):
    """No usable credentials: the token is missing, malformed, badly signed or expired."""

    code = "unauthorized"

    def __init__(self, message: str, *, token_given: bool = True) -> None:
        super().__init__(message)
        self.token_given = token_given


class Forbidden(PgcastError):
    """Valid credentials that do not grant this action on this name."""

    code = "forbidden"


class RateLimited(PgcastError):
    """Too many publishes for one token (or one client address); retry after a while."""

    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class TooManyConnections(PgcastError):
    """This process holds MAX_CONNECTIONS streaming connections; retry after a while."""

    code = "too_many_connections"


class CannotListen(PgcastError):
    """`serve` cannot bind its address: the port is taken, out of reach or not allowed."""

    code = "cannot_listen"
