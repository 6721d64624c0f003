"""`pgcast queue ...`: enqueue, inspect, requeue dead letters and run workers over HTTP."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from backend.core import exactjson
from backend.interface.cli.client import (
    DEFAULT_URL,
    Api,
    Token,
    Url,
    command_group,
    guarded,
    name_segment,
    segment,
    write_line,
)
from backend.interface.cli.lines import post_created
from backend.interface.cli.worker import work

DEAD_PAGE = 1000

queue_app = command_group(
    "queue", "Point-to-point work queues: enqueue, work, stats, dead letters."
)
queue_app.command()(work)

Queue = Annotated[str, typer.Argument(metavar="QUEUE", help="The queue, e.g. emails.")]


@queue_app.command()
def enqueue(
    queue: Queue,
    value: Annotated[
        str | None,
        typer.Argument(metavar="JSON", help="The message's data; omit to read stdin."),
    ] = None,
    delay: Annotated[
        float | None, typer.Option("--delay", min=0, help="Deliver after S seconds.")
    ] = None,
    max_attempts: Annotated[
        int | None,
        typer.Option("--max-attempts", min=1, help="Dead-letter after N failed attempts."),
    ] = None,
    key: Annotated[str | None, typer.Option("--key", help="Key of every message.")] = None,
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Enqueue messages and print their ids, one per line.

    Without a JSON argument, every non-blank line of stdin (JSON Lines) is
    one message's data, sent in batches. If line N is not valid JSON,
    pgcast stops with exit status 1: lines 1 to N-1 have been enqueued,
    line N and everything after it have not.

    Examples:

      pgcast queue enqueue emails '{"to": "ada@example.com"}' --max-attempts 3

      jq -c '.[]' jobs.json | pgcast queue enqueue jobs --delay 60
    """
    path = f"/queues/{name_segment(queue, 'queue')}/messages"
    fields = {"delay_seconds": delay, "max_attempts": max_attempts, "key": key}
    post_created(Api(url, token), path, value, fields, "messages")


def _age(seconds: object) -> str:
    return "-" if not isinstance(seconds, int | float) else f"{seconds:.1f}s"


def _table(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("queue", "ready", "leased", "delayed", "dead", "oldest ready")
    for row in rows:
        counts = [str(row.get(name, 0)) for name in ("ready", "leased", "delayed", "dead")]
        table.add_row(str(row["queue"]), *counts, _age(row.get("oldest_ready_age_seconds")))
    Console().print(table)


@queue_app.command()
def stats(
    queue: Annotated[
        str | None, typer.Argument(metavar="QUEUE", help="One queue; omit for all.")
    ] = None,
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Ready, leased, delayed and dead counts: a table on a terminal, JSON otherwise.

    Examples:

      pgcast queue stats

      pgcast queue stats emails | jq .dead
    """
    api = Api(url, token)
    with guarded(), api.client() as client:
        path = "/queues" if queue is None else f"/queues/{name_segment(queue, 'queue')}"
        body = api.call(client, "GET", path)
        if sys.stdout.isatty():
            _table(body["queues"] if queue is None else [body])
        else:
            write_line(exactjson.dumps(body).decode())


@queue_app.command()
def dead(queue: Queue, url: Url = DEFAULT_URL, token: Token = None) -> None:
    """Print the dead-lettered messages of QUEUE as JSON Lines (with `last_error`).

    Example: pgcast queue dead emails | jq -r .last_error
    """
    api = Api(url, token)
    path = f"/queues/{name_segment(queue, 'queue')}/dead"
    after: str | None = None
    with guarded(), api.client() as client:
        while True:
            params = {"limit": str(DEAD_PAGE), **({"after": after} if after else {})}
            messages = api.call(client, "GET", path, params=params)["messages"]
            for message in messages:
                write_line(exactjson.dumps(message).decode())
            if len(messages) < DEAD_PAGE:
                return
            after = str(messages[-1]["id"])


@queue_app.command()
def requeue(
    queue: Queue,
    message_id: Annotated[
        str | None, typer.Argument(metavar="ID", help="One dead message to requeue.")
    ] = None,
    all_: Annotated[bool, typer.Option("--all", help="Requeue every dead message.")] = False,
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Move dead-lettered messages back to ready, with their attempts reset.

    Examples:

      pgcast queue requeue emails 1234

      pgcast queue requeue emails --all
    """
    if (message_id is None) == (not all_):
        raise typer.BadParameter("give exactly one of a message ID or --all")
    if message_id is not None and not (message_id.isascii() and message_id.isdigit()):
        raise typer.BadParameter(f"a message ID is a number, not {message_id!r}")
    api = Api(url, token)
    base = f"/queues/{name_segment(queue, 'queue')}/dead"
    with guarded(), api.client() as client:
        if message_id is not None:
            api.call(client, "POST", f"{base}/{segment(message_id)}/requeue")
            write_line(f"requeued message {message_id}")
        else:
            moved = api.call(client, "POST", f"{base}/requeue")["requeued"]
            write_line(f"requeued {moved} message(s)")
