"""`pgcast db url` and `pgcast db shell`: where the database is, and SQL without psql.

With DATABASE_URL set they use it; otherwise the embedded PostgreSQL under
DATA_DIR/postgres, at the port it runs on (EMBEDDED_PG_PORT unless an older server still
runs elsewhere). Neither starts the embedded server: `pgcast serve` does. The database
modules are imported inside the commands, since every `pgcast` command loads this one.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated

import orjson
import typer

from backend.interface.server.commands import settings_or_exit

if TYPE_CHECKING:
    from backend.connectors.sql_shell import Outcome
    from backend.core.settings import Settings

db_app = typer.Typer(
    help="The PostgreSQL pgcast uses: its URL, and a SQL shell.", no_args_is_help=True
)

PROMPT = "pgcast=> "
CONTINUED = "pgcast-> "
QUIT = "\\q"


def database_url(settings: Settings) -> tuple[str, bool]:
    """(URL, known to be running): DATABASE_URL, else the embedded server's address."""
    from backend.connectors.embedded import EmbeddedPostgres, url_at

    if settings.database_url:
        return settings.database_url, True
    port = EmbeddedPostgres(settings.data_dir / "postgres").running_port()
    return url_at(port or settings.embedded_pg_port), port is not None


@db_app.command("url")
def url() -> None:
    """Print the database URL, for scripts.

    The embedded server's URL carries no password (it trusts local connections).

    Example: psql "$(pgcast db url)"
    """
    address, running = database_url(settings_or_exit())
    if not running:
        typer.echo(
            "pgcast: the embedded PostgreSQL is not running; `pgcast serve` starts it", err=True
        )
    typer.echo(address)


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return orjson.dumps(value).decode()
    return str(value)


def _show(outcome: Outcome) -> None:
    if outcome.error is not None:
        typer.echo(f"ERROR: {outcome.error}", err=True)
        return
    if outcome.columns:
        typer.echo(" | ".join(outcome.columns))
        for row in outcome.rows:
            typer.echo(" | ".join(_cell(value) for value in row))
        count = len(outcome.rows)
        typer.echo(f"({count} row{'' if count == 1 else 's'})")
    else:
        typer.echo(outcome.status)


def _read_line(interactive: bool, continued: bool) -> str | None:
    """The next line of SQL, or None at the end of input."""
    if not interactive:
        return sys.stdin.readline() or None
    try:
        return input(CONTINUED if continued else PROMPT)
    except EOFError:
        typer.echo()
        return None


def _statements(interactive: bool) -> Iterator[str]:
    """SQL texts ending with `;` at the end of a line outside `$$` quotes (or at end of
    input); `\\q` stops."""
    pending: list[str] = []
    while (line := _read_line(interactive, bool(pending))) is not None:
        if line.strip() == QUIT:
            return
        pending.append(line.rstrip("\n"))
        inside_body = "\n".join(pending).count("$$") % 2 == 1  # a function body's own `;`
        if line.rstrip().endswith(";") and not inside_body:
            yield "\n".join(pending)
            pending = []
    if "".join(pending).strip():
        yield "\n".join(pending)


async def _run(address: str, texts: Iterator[str]) -> bool:
    """Run every text in order; whether all of them succeeded."""
    from backend.connectors.database import connect
    from backend.connectors.sql_shell import run_sql

    conn = await connect(address, application_name="pgcast-shell")
    ok = True
    try:
        for text in texts:
            outcome = await run_sql(conn, text)
            ok = ok and outcome.error is None
            _show(outcome)
    finally:
        await conn.close()
    return ok


@db_app.command("shell")
def shell(
    command: Annotated[
        str | None, typer.Option("-c", "--command", help="Run this SQL and exit.")
    ] = None,
) -> None:
    """An interactive SQL shell on the database; needs no psql.

    A statement runs when a line ends with `;`. Without a terminal it reads SQL from
    stdin and exits 1 if any statement failed. `\\q` or Ctrl-D quits.

    Examples:

      pgcast db shell

      pgcast db shell -c 'SELECT topic, max(pos) FROM pgcast.events GROUP BY topic;'

      pgcast db shell < examples/orders.sql
    """
    import anyio

    address, _ = database_url(settings_or_exit())
    texts = iter([command]) if command is not None else _statements(sys.stdin.isatty())
    if not anyio.run(_run, address, texts):
        raise typer.Exit(1)
