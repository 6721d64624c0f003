"""JSON Lines from stdin, posted in batches: big batches for files, prompt ones for live pipes.

A batch is sent when it reaches `MAX_LINES` lines or `MAX_BYTES` bytes, when the input has
been idle for `IDLE_SECONDS`, or at the end of the input. A line that is not JSON stops
the run after everything before it has been sent, so the caller knows exactly which
lines made it: all the lines before the bad one. So does a line the server refuses (too
large, say): a batch is all or nothing, so a refused one is sent again line by line, up
to the line at fault, which is named.
"""

from __future__ import annotations

import os
import selectors
import sys
from collections.abc import Callable, Iterator
from typing import Any

from backend.core import exactjson
from backend.core.errors import InvalidJson, PgcastError
from backend.interface.cli.client import Api, ApiError, fail, guarded, write_line

MAX_LINES = 500
MAX_BYTES = 4 * 1024 * 1024
IDLE_SECONDS = 0.05
READ_SIZE = 64 * 1024

Send = Callable[[list[dict[str, Any]]], None]
REFUSED_ITEM = frozenset({"invalid_event", "event_too_large"})
"""Refusals about one item of a batch (the rest of the batch was fine)."""


def _readable(selector: selectors.BaseSelector, fd: int) -> bool:
    """Whether `fd` can be polled (pipes, terminals, sockets; not regular files)."""
    try:
        selector.register(fd, selectors.EVENT_READ)
    except (PermissionError, ValueError):
        return False
    return True


def _chunks(fd: int) -> Iterator[bytes | None]:
    """Raw reads from `fd`; `None` whenever nothing arrived for `IDLE_SECONDS`.

    Raw reads (no buffered reader, no thread) keep an unread stdin from blocking exit.
    """
    with selectors.DefaultSelector() as selector:
        pollable = _readable(selector, fd)
        while True:
            if pollable and not selector.select(IDLE_SECONDS):
                yield None
                continue
            chunk = os.read(fd, READ_SIZE)
            if not chunk:
                return
            yield chunk


def _lines(fd: int) -> Iterator[bytes | None]:
    """Complete lines (without the newline), `None` on idle input."""
    pending = b""
    for chunk in _chunks(fd):
        if chunk is None:
            yield None
            continue
        pending += chunk
        *lines, pending = pending.split(b"\n")
        yield from lines
    if pending:
        yield pending


def _post_lines(make_item: Callable[[Any], dict[str, Any]], send: Send) -> None:
    """Read stdin to its end, posting `make_item(value)` for every non-blank line."""
    batch: list[dict[str, Any]] = []
    numbers: list[int] = []
    size = 0
    number = 0

    def flush() -> None:
        nonlocal batch, numbers, size
        if batch:
            _send_naming_the_line(send, batch, numbers)
        batch, numbers, size = [], [], 0

    for line in _lines(sys.stdin.fileno()):
        if line is None:
            flush()
            continue
        number += 1
        if not line.strip():
            continue
        try:
            value = exactjson.loads(line, f"line {number}")
        except PgcastError as exc:
            flush()
            fail(exc.message if isinstance(exc, InvalidJson) else f"line {number}: {exc.message}")
        batch.append(make_item(value))
        numbers.append(number)
        size += len(line)
        if len(batch) >= MAX_LINES or size >= MAX_BYTES:
            flush()
    flush()


def _send_naming_the_line(send: Send, batch: list[dict[str, Any]], numbers: list[int]) -> None:
    """Send the batch; if the server refuses one of its items, send them one by one so that
    every line before that one is published, then stop naming its line."""
    try:
        send(batch)
        return
    except ApiError as exc:
        if exc.code not in REFUSED_ITEM:
            raise
    for item, number in zip(batch, numbers, strict=True):
        try:
            send([item])
        except ApiError as exc:
            if exc.code not in REFUSED_ITEM:
                raise
            fail(f"line {number}: {exc.message}")


def post_created(
    api: Api, path: str, value: str | None, fields: dict[str, Any], listed: str
) -> None:
    """POST `{"data": ..., **fields}` for the JSON argument, or for every line of stdin.

    Prints the id of every created item (the answer's `listed` array), one per line, as soon
    as its batch is committed. `fields` that are None are left out.
    """
    extra = {name: field for name, field in fields.items() if field is not None}

    def item(data: Any) -> dict[str, Any]:
        return {"data": data, **extra}

    with guarded(), api.client() as client:

        def send(batch: list[dict[str, Any]]) -> None:
            for created in api.call(client, "POST", path, json=batch)[listed]:
                write_line(str(created["id"]))

        if value is not None:
            send([item(_parse_value(value))])
        else:
            _post_lines(item, send)


def _parse_value(text: str) -> Any:
    """A JSON value given on the command line."""
    try:
        return exactjson.loads(text, "the JSON argument")
    except PgcastError as exc:
        fail(exc.message)
