"""The `pgcast` command line (also `python -m backend`): client commands plus serve, migrate, db."""

from __future__ import annotations

import sys

import typer

from backend.core.errors import PgcastError
from backend.interface.cli.app import app
from backend.interface.server.commands import migrate, serve
from backend.interface.server.db import db_app
from backend.interface.server.exits import describe

app.command()(serve)
app.command()(migrate)
app.add_typer(db_app, name="db")


def main() -> None:
    """Entry point: typed errors become one line on stderr and a documented exit status."""
    try:
        app()
    except PgcastError as exc:
        line, status = describe(exc)
        typer.echo(line, err=True)
        sys.exit(status)
