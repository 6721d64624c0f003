"""How `pgcast tail` shows events: JSON Lines for programs, coloured lines for people."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from backend.core import exactjson
from backend.interface.cli.client import write_line

if TYPE_CHECKING:
    from rich.console import Console


class Printer(Protocol):
    def line(self, envelope_json: str) -> None:
        """An envelope as the server encoded it."""

    def envelope(self, envelope: dict[str, Any]) -> None:
        """An envelope already decoded."""


class JsonLines:
    """One envelope per line, flushed per event so `| jq` works live."""

    def line(self, envelope_json: str) -> None:
        write_line(envelope_json)

    def envelope(self, envelope: dict[str, Any]) -> None:
        write_line(exactjson.dumps(envelope).decode())


def _clock(stamp: object) -> str:
    """Local wall time; the date only when it is not today."""
    try:
        moment = datetime.fromisoformat(str(stamp)).astimezone()
    except ValueError:
        return str(stamp)
    text = moment.strftime("%H:%M:%S.%f")[:-3]
    if moment.date() != datetime.now(UTC).astimezone().date():
        text = moment.strftime("%Y-%m-%d ") + text
    return text


class Pretty:
    """Time, id, topic, type, key and data, coloured with rich."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.highlighter import JSONHighlighter

        class Quiet(Console):
            def on_broken_pipe(self) -> None:
                """A closed pipe is a normal way to stop reading; the CLI exits 0."""
                self.quiet = True
                raise BrokenPipeError

        self.console: Console = Quiet(highlight=False, soft_wrap=True)
        self.highlight = JSONHighlighter()

    def line(self, envelope_json: str) -> None:
        self.envelope(exactjson.loads(envelope_json, "the event", allow_nul=True))

    def envelope(self, envelope: dict[str, Any]) -> None:
        from rich.text import Text

        event_id = str(envelope.get("id", ""))
        digits = event_id.lstrip("0") or "0"
        text = Text()
        text.append(_clock(envelope.get("time")), "dim")
        text.append("  ")
        text.append(event_id[: len(event_id) - len(digits)], "dim")
        text.append(digits, "cyan")
        text.append("  ")
        text.append(str(envelope.get("topic")), "bold green")
        if envelope.get("type"):
            text.append(f"  {envelope['type']}", "magenta")
        if envelope.get("key") is not None:
            text.append(f"  key={envelope['key']}", "yellow")
        text.append("  ")
        text.append_text(self.highlight(Text(exactjson.dumps(envelope.get("data")).decode())))
        self.console.print(text)


def printer_for(output: str) -> Printer:
    return Pretty() if output == "pretty" else JsonLines()
