"""`pgcast topics`: the topics of the log with their event count and newest event."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import orjson
import typer

from backend.interface.cli.client import DEFAULT_URL, Api, Token, Url, guarded, write_line

PAGE_SIZE = 1000


def _table(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("topic", "events", "newest id", "newest time")
    for row in rows:
        table.add_row(row["topic"], str(row["events"]), row["newest_id"], row["newest_time"])
    Console().print(table)


def topics(
    pattern: Annotated[
        str, typer.Argument(metavar="PATTERN", help="Only topics matching it (orders.>).")
    ] = ">",
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="At most N topics.")] = None,
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """List topics with their event count, newest id and time, by name.

    A table on a terminal; one JSON object per line otherwise. Counts cover
    the retained log only.

    Examples:

      pgcast topics

      pgcast topics 'orders.>' | jq -r .topic
    """
    api = Api(url, token)
    rows: list[dict[str, Any]] = []
    after = ""
    with guarded(), api.client() as client:
        while limit is None or len(rows) < limit:
            size = PAGE_SIZE if limit is None else min(PAGE_SIZE, limit - len(rows))
            params = {"pattern": pattern, "after": after, "limit": str(size)}
            page = api.call(client, "GET", "/topics", params=params)
            rows += page["topics"]
            if page["next"] is None:
                break
            after = page["next"]
        if sys.stdout.isatty():
            _table(rows)
        else:
            for row in rows:
                write_line(orjson.dumps(row).decode())
