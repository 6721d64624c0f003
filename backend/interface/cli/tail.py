"""`pgcast tail`: follow topics over SSE, or replay them to the current end over JSON pages.

Following resumes after every disconnect with `Last-Event-ID` set to the last id printed,
so a flaky link or a server restart costs neither a gap nor a duplicate. `--from latest`
is first pinned to the current head id for the same reason: a reconnect before the first
event must not skip what was published meanwhile.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from enum import StrEnum
from typing import Annotated, Any

import httpx
import orjson
import typer
from httpx_sse import connect_sse

from backend.interface.cli.client import (
    DEFAULT_URL,
    STREAM_TIMEOUT,
    Api,
    ApiError,
    Token,
    Url,
    error_of,
    guarded,
    notice,
)
from backend.interface.cli.printers import Printer, printer_for
from backend.interface.cli.reconnect import Reconnects

RESET_EVENT = "pgcast.reset"
PAGE_SIZE = 1000

Query = list[tuple[str, str]]


class Output(StrEnum):
    jsonl = "jsonl"
    pretty = "pretty"


def _start(value: str) -> str:
    if value in ("earliest", "latest") or (value.isascii() and value.isdigit()):
        return value
    raise typer.BadParameter("expected 'earliest', 'latest' or an event id")


def _report_reset(body: Any) -> None:
    body = body if isinstance(body, dict) else {}
    notice(
        f"stream reset ({body.get('reason', 'unknown')}): continuing from the oldest "
        f"retained event {body.get('oldest')}; {body.get('message', '')}".rstrip("; ")
    )


def head_id(api: Api, client: httpx.Client, query: Query) -> str:
    """The id of the newest event in the log right now (ids are positions)."""
    page = api.call(client, "GET", "/events", params=[*query, ("after", "latest"), ("limit", "1")])
    return str(page["next"])


def follow(api: Api, query: Query, start: str, printer: Printer, limit: int | None) -> None:
    """SSE until `limit` events (or forever), reconnecting with backoff after any loss."""
    count = 0
    reconnects = Reconnects(api.base)
    with api.client(STREAM_TIMEOUT) as client:
        # No id to resume after only when starting from (or reset to) the earliest event.
        last_id: str | None = start
        if start == "latest":
            last_id = head_id(api, client, query)
        elif start == "earliest":
            last_id = None
        while True:
            headers = {"Last-Event-ID": last_id} if last_id else {}
            params = query if last_id else [*query, ("after", "earliest")]
            with (
                reconnects.attempt(),
                connect_sse(client, "GET", "/events", params=params, headers=headers) as sse,
            ):
                if sse.response.is_error:
                    raise error_of(sse.response)
                reconnects.opened()
                for message in sse.iter_sse():
                    if message.event == RESET_EVENT:
                        _report_reset(orjson.loads(message.data or "{}"))
                        last_id = None
                        continue
                    if not message.data or not message.id:
                        continue  # the `retry:` hint
                    printer.line(message.data)
                    last_id = message.id
                    count += 1
                    if limit is not None and count >= limit:
                        return
            time.sleep(reconnects.delay())


@contextlib.contextmanager
def _progress(enabled: bool, start: int, head: int) -> Iterator[Callable[[str], None]]:
    """A transient bar on stderr while replaying; stdout keeps only the events."""
    if not enabled or head <= start:
        yield lambda _id: None
        return
    from rich.console import Console
    from rich.progress import Progress

    total = head - start
    with Progress(
        console=Console(stderr=True),
        transient=True,
        redirect_stdout=sys.stdout.isatty(),
        redirect_stderr=False,
    ) as bar:
        task = bar.add_task("replaying", total=total)
        yield lambda event_id: bar.update(task, completed=min(int(event_id) - start, total))


def replay(
    api: Api, query: Query, start: str, printer: Printer, limit: int | None, show: bool
) -> None:
    """JSON pages after `start` until a page comes back empty: the current end."""
    count = 0
    after = start
    with api.client() as client:
        head = int(head_id(api, client, query)) if show else 0
        first = 0 if start in ("earliest", "latest") else int(start)
        with _progress(show and start != "latest", first, head) as advance:
            while limit is None or count < limit:
                size = PAGE_SIZE if limit is None else min(PAGE_SIZE, limit - count)
                params = [*query, ("after", after), ("limit", str(size))]
                try:
                    page = api.call(client, "GET", "/events", params=params)
                except ApiError as exc:
                    if exc.code != "cursor_expired":
                        raise
                    _report_reset(exc.body)
                    after = "earliest"
                    continue
                if not page["events"]:
                    return
                for envelope in page["events"]:
                    printer.envelope(envelope)
                count += len(page["events"])
                after = str(page["next"])
                advance(after)


def tail(
    patterns: Annotated[
        list[str], typer.Argument(metavar="PATTERN", help="Topics or patterns (orders.>).")
    ],
    start: Annotated[
        str,
        typer.Option(
            "--from",
            metavar="earliest|latest|ID",
            callback=_start,
            help="Where to start: the oldest retained event, new events only, or after ID.",
        ),
    ] = "latest",
    filter_: Annotated[
        str | None,
        typer.Option(
            "--filter",
            metavar="EXPR",
            help="Server-side filter, e.g. data.status=eq.paid&data.total=gte.100",
        ),
    ] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, help="Exit after N events.")
    ] = None,
    no_follow: Annotated[
        bool, typer.Option("--no-follow", help="Exit 0 at the current end of the stream.")
    ] = False,
    output: Annotated[
        Output | None,
        typer.Option(
            "--output", help="jsonl (default when piped) or pretty (default on a terminal)."
        ),
    ] = None,
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Print events of PATTERN... as they are published.

    Piped, each event is one JSON line (its envelope), flushed at once;
    on a terminal the output is coloured. After a disconnect or a server
    restart the tail reconnects and resumes after the last event printed,
    with no gap and no duplicate; notices go to stderr. Ctrl-C exits 0.

    Examples:

      pgcast tail 'orders.>' --from earliest | jq .data

      pgcast tail orders.created payments.settled --filter 'data.total=gte.100'

      pgcast tail 'orders.>' --from earliest --no-follow > orders.jsonl
    """
    api = Api(url, token)
    query: Query = [("topic", pattern) for pattern in patterns]
    if filter_:
        query.append(("filter", filter_))
    chosen = output or (Output.pretty if sys.stdout.isatty() else Output.jsonl)
    with guarded(interrupt_status=0):
        printer = printer_for(chosen.value)
        if no_follow:
            replay(api, query, start, printer, limit, show=sys.stderr.isatty())
        else:
            follow(api, query, start, printer, limit)
