"""docs/protocol.md §6 and the server agree on every error code and its status."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from backend.core import errors
from backend.interface.http.errors import HTTP_STATUS, RequestError, status_of

ROOT = Path(__file__).resolve().parents[3]
ROW = re.compile(r"^\| `([a-z_]+)` \| (\d{3}|other) \|")


def documented_statuses() -> dict[str, int | None]:
    """The code table of docs/protocol.md §6, as {code: status}."""
    text = (ROOT / "docs" / "protocol.md").read_text()
    section = text.split("\n## 6. Errors\n", 1)[1].split("\n## 7.", 1)[0]
    table: dict[str, int | None] = {}
    for line in section.splitlines():
        if match := ROW.match(line):
            code, status = match.groups()
            assert code not in table, f"{code} is listed twice in protocol.md §6"
            table[code] = None if status == "other" else int(status)
    return table


def typed_errors() -> list[type[errors.PgcastError]]:
    found = []
    pending = [errors.PgcastError]
    while pending:
        kind = pending.pop()
        pending.extend(kind.__subclasses__())
        if kind.__module__ == errors.__name__:
            found.append(kind)
    return found


def request_error_calls() -> list[tuple[str, int, str]]:
    """(file, status, code) of every `RequestError(status, "code", ...)` in the interface."""
    calls = []
    for path in (ROOT / "backend" / "interface").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "RequestError"
            ):
                status, code = (ast.literal_eval(arg) for arg in node.args[:2])
                calls.append((path.name, status, code))
    return calls


def test_the_documented_table_is_the_servers_table() -> None:
    assert documented_statuses() == HTTP_STATUS


def test_every_typed_error_has_its_documented_status() -> None:
    not_http = {errors.PgcastError, errors.ConfigError, errors.CannotListen}
    for kind in typed_errors():
        if kind in not_http:
            continue
        assert kind.code in HTTP_STATUS, f"{kind.__name__}.code {kind.code!r} is not in the table"
        error = kind.__new__(kind)
        assert status_of(error) == HTTP_STATUS[kind.code], kind.__name__


def test_every_request_error_uses_the_status_of_its_code() -> None:
    calls = request_error_calls()
    assert calls, "no RequestError raised anywhere: the scan is broken"
    for where, status, code in calls:
        assert HTTP_STATUS.get(code) == status, f"{where}: RequestError({status}, {code!r})"
    assert status_of(RequestError(415, "unsupported_media_type", "x")) == 415
