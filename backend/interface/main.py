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
    """Entry point: typed errors become one line on stderr and a documented exit status.

    So does text that cannot be sent: an argument or variable that is not UTF-8, or a token
    or URL that is not ASCII (status 2)."""
    for index, argument in enumerate(sys.argv[1:], 1):
        try:
            argument.encode()
        except UnicodeEncodeError as exc:
            typer.echo(f"pgcast: argument {index} {_unsendable(exc)}", err=True)
            sys.exit(2)
    try:
        app()
    except PgcastError as exc:
        line, status = describe(exc)
        typer.echo(line, err=True)
        sys.exit(status)
    except UnicodeError as exc:
        typer.echo(f"pgcast: an argument or variable {_unsendable(exc)}", err=True)
        sys.exit(2)


def _unsendable(exc: UnicodeError) -> str:
    """Which text could not be encoded, and why."""
    if isinstance(exc, UnicodeEncodeError):
        bad = exc.object[exc.start : exc.end]
        if all("\udc80" <= char <= "\udcff" for char in bad):  # bytes that were not UTF-8
            raw = " ".join(f"0x{ord(char) - 0xDC00:02x}" for char in bad)
            return f"holds bytes that are not UTF-8 ({raw})"
        return f"holds {bad!r}, which cannot be sent ({exc.reason})"
    return f"cannot be read as text ({exc})"
