"""The `pgcast` command line (also `python -m backend`): client commands plus serve and migrate."""

from __future__ import annotations

import sys

import typer

from backend.core.errors import ConfigError, DatabaseUnavailable, PgcastError
from backend.interface.cli.app import app
from backend.interface.server.commands import migrate, serve

app.command()(serve)
app.command()(migrate)


# Exit statuses, documented in docs/operations.md: 2 for anything the operator must fix in
# the configuration, 3 for a database that cannot be reached, 1 for every other error.
CONFIG_STATUS = 2
UNREACHABLE_STATUS = 3
ERROR_STATUS = 1


def main() -> None:
    """Entry point: typed errors become one line on stderr and a documented exit status."""
    try:
        app()
    except ConfigError as exc:
        typer.echo(f"pgcast: configuration error: {exc.message}", err=True)
        sys.exit(CONFIG_STATUS)
    except DatabaseUnavailable as exc:
        typer.echo(f"pgcast: {exc.message}", err=True)
        sys.exit(UNREACHABLE_STATUS)
    except PgcastError as exc:
        typer.echo(f"pgcast: {exc.message}", err=True)
        sys.exit(ERROR_STATUS)
