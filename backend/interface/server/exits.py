"""How a typed error ends the `pgcast` process: one line on stderr and a documented status.

docs/operations.md lists them: 2 for anything the operator must fix in the configuration,
3 for a database that cannot be reached, 1 for every other error. A server worker that
cannot start ends the same way, and the parent of `serve --workers` then stops with it.
"""

from __future__ import annotations

from backend.core.errors import ConfigError, DatabaseUnavailable, PgcastError

CONFIG_STATUS = 2
UNREACHABLE_STATUS = 3
ERROR_STATUS = 1


def describe(exc: PgcastError) -> tuple[str, int]:
    """The line to print and the exit status for `exc`."""
    if isinstance(exc, ConfigError):
        return f"pgcast: configuration error: {exc.message}", CONFIG_STATUS
    if isinstance(exc, DatabaseUnavailable):
        return f"pgcast: {exc.message}", UNREACHABLE_STATUS
    return f"pgcast: {exc.message}", ERROR_STATUS
