"""`pgcast capture ...`: manage table change capture through a running server's admin API."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from backend.interface.cli.client import (
    DEFAULT_URL,
    Api,
    Token,
    Url,
    command_group,
    guarded,
    notice,
    segment,
)

capture_app = command_group(
    "capture", "Stream INSERT/UPDATE/DELETE/TRUNCATE of tables as pgcast events."
)

Table = Annotated[
    str,
    typer.Argument(
        metavar="SCHEMA.TABLE", help="The table, e.g. public.orders (no schema: public)."
    ),
]


def _call(method: str, url: str, path: str, token: str | None, body: Any = None) -> Any:
    """One admin request; errors become one line on stderr and exit status 1."""
    api = Api(url, token)
    with guarded(), api.client() as client:
        return api.call(client, method, path, json=body)


def _path(table: str) -> str:
    """The table's route; a name no route could carry (empty, or with a `/`) is a usage
    error here rather than a bare `Not Found` from the server."""
    if not table or "/" in table:
        notice(f"invalid table {table!r}: expected [schema.]table")
        raise typer.Exit(2)
    return "/admin/captures/" + segment(table)


def _describe(capture: dict[str, Any]) -> str:
    columns = capture.get("columns")
    shown = "all columns" if columns is None else "columns " + ",".join(columns)
    return f"{capture['table']} -> {capture['topic']} ({shown})"


@capture_app.command()
def add(
    table: Table,
    topic: Annotated[
        str | None, typer.Option(help="Topic of its events (default db.<schema>.<table>).")
    ] = None,
    columns: Annotated[
        str | None, typer.Option(help="Comma-separated columns to include (default: all).")
    ] = None,
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Capture a table's changes; running it again updates its topic and columns.

    Example: pgcast capture add public.orders --topic shop.orders --columns id,total
    """
    body: dict[str, Any] = {}
    if topic is not None:
        body["topic"] = topic
    if columns is not None:
        body["columns"] = [column.strip() for column in columns.split(",") if column.strip()]
    capture = _call("PUT", url, _path(table), token, body)
    typer.echo(f"capturing {_describe(capture)}")


@capture_app.command("list")
def list_(url: Url = DEFAULT_URL, token: Token = None) -> None:
    """Show the captured tables, one per line: table -> topic (columns).

    Example: PGCAST_URL=http://127.0.0.1:8000 pgcast capture list
    """
    result = _call("GET", url, "/admin/captures", token)
    for capture in result["captures"]:
        typer.echo(_describe(capture))


@capture_app.command()
def remove(table: Table, url: Url = DEFAULT_URL, token: Token = None) -> None:
    """Stop capturing a table (its triggers are dropped; nothing else changes).

    Example: pgcast capture remove public.orders
    """
    result = _call("DELETE", url, _path(table), token)
    if result["removed"]:
        typer.echo(f"stopped capturing {table}")
    else:
        typer.echo(f"{table} was not captured")
