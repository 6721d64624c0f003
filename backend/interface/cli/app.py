"""The client commands of `pgcast`: an HTTP client of a running server (no services)."""

from __future__ import annotations

import typer

from backend.interface.cli.capture import capture_app
from backend.interface.cli.publish import publish
from backend.interface.cli.queue import queue_app
from backend.interface.cli.tail import tail
from backend.interface.cli.token import token_app
from backend.interface.cli.topics import topics

app = typer.Typer(
    name="pgcast",
    help="Live streams and work queues on PostgreSQL.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(capture_app, name="capture")
app.command()(tail)
app.command()(publish)
app.command()(topics)
app.add_typer(queue_app, name="queue")
app.add_typer(token_app, name="token")
