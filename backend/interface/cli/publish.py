"""`pgcast publish`: events from an argument or from JSON Lines on stdin."""

from __future__ import annotations

from typing import Annotated

import typer

from backend.interface.cli.client import DEFAULT_URL, Api, Token, Url, name_segment
from backend.interface.cli.lines import post_created


def publish(
    topic: Annotated[str, typer.Argument(metavar="TOPIC", help="The topic, e.g. orders.created.")],
    value: Annotated[
        str | None,
        typer.Argument(metavar="JSON", help="The event's data; omit to read stdin."),
    ] = None,
    type_: Annotated[str | None, typer.Option("--type", help="Event type of every event.")] = None,
    key: Annotated[str | None, typer.Option("--key", help="Key of every event.")] = None,
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Publish events to TOPIC and print their ids, one per line.

    With a JSON argument, publish that one value as the event's data.
    Without one, read JSON Lines from stdin: every non-blank line is one
    event's data, sent in batches (up to 500 lines, or when input pauses).

    If line N is not valid JSON, or the server refuses it (too large, say),
    pgcast stops with exit status 1 and `pgcast: line N ...` saying why:
    lines 1 to N-1 have been published (their ids are printed), line N and
    everything after it have not.

    Examples:

      pgcast publish orders.created '{"id": 42}'

      jq -c '.[]' orders.json | pgcast publish orders.created --type order.created
    """
    path = f"/topics/{name_segment(topic, 'topic')}/events"
    post_created(Api(url, token), path, value, {"type": type_, "key": key}, "events")
