"""The client commands of `pgcast`: an HTTP client of a running server (no services)."""

from __future__ import annotations

from backend.interface.cli.capture import capture_app
from backend.interface.cli.client import command_group
from backend.interface.cli.publish import publish
from backend.interface.cli.queue import queue_app
from backend.interface.cli.tail import tail
from backend.interface.cli.token import token_app
from backend.interface.cli.topics import topics

app = command_group("pgcast", "Live streams and work queues on PostgreSQL.")
app.add_typer(capture_app, name="capture")
app.command()(tail)
app.command()(publish)
app.command()(topics)
app.add_typer(queue_app, name="queue")
app.add_typer(token_app, name="token")
