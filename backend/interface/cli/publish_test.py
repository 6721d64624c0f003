"""`pgcast publish` as a real process, plus the exit codes every client command shares."""

from __future__ import annotations

import httpx
import pytest

from backend.testing.cli import run
from backend.testing.json_documents import exact
from backend.testing.server import ServerProcess, free_port

pytestmark = pytest.mark.external


def stored(server: ServerProcess, topic: str) -> list[dict[str, object]]:
    """Every event of `topic`, page by page."""
    events: list[dict[str, object]] = []
    after = "earliest"
    while True:
        response = httpx.get(
            f"{server.url}/topics/{topic}/events", params={"after": after, "limit": 1000}
        )
        assert response.status_code == 200, response.text
        page = response.json()
        if not page["events"]:
            return events
        events += page["events"]
        after = page["next"]


def test_publish_one_json_argument_with_type_and_key(cli_server: ServerProcess) -> None:
    result = run(cli_server.url, "publish", "one", '{"n": 1}', "--type", "t", "--key", "k")
    assert result.returncode == 0, result.stderr
    (event,) = stored(cli_server, "one")
    assert result.stdout == f"{event['id']}\n"
    assert (event["data"], event["type"], event["key"]) == ({"n": 1}, "t", "k")


def test_publish_json_lines_from_stdin_prints_every_id(cli_server: ServerProcess) -> None:
    lines = "".join(f'{{"n": {n}}}\n' for n in range(1200)) + "\n  \n" + '"last"'
    result = run(cli_server.url, "publish", "lines", stdin=lines)
    assert result.returncode == 0, result.stderr
    events = stored(cli_server, "lines")
    assert [e["data"] for e in events] == [{"n": n} for n in range(1200)] + ["last"]
    assert result.stdout.splitlines() == [e["id"] for e in events]


def test_bad_json_on_line_3_publishes_lines_1_and_2_and_exits_1(
    cli_server: ServerProcess,
) -> None:
    result = run(cli_server.url, "publish", "bad", stdin='{"n": 1}\n2\n{oops\n4\n')
    assert result.returncode == 1
    assert result.stderr.startswith("pgcast: line 3 is not valid JSON: ")
    assert len(result.stderr.splitlines()) == 1
    events = stored(cli_server, "bad")
    assert [e["data"] for e in events] == [{"n": 1}, 2]
    assert result.stdout.splitlines() == [e["id"] for e in events]


def test_a_refused_line_publishes_the_lines_before_it_and_is_named(
    cli_server: ServerProcess,
) -> None:
    too_large = '"' + "x" * (1024 * 1024 + 10) + '"'  # over the default MAX_EVENT_BYTES
    lines = "".join(f'{{"n": {n}}}\n' for n in range(1, 4)) + too_large + '\n{"n": 5}\n'
    result = run(cli_server.url, "publish", "refused", stdin=lines)
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith("pgcast: line 4: event data is "), line
    events = stored(cli_server, "refused")
    assert [e["data"] for e in events] == [{"n": 1}, {"n": 2}, {"n": 3}]
    assert result.stdout.splitlines() == [e["id"] for e in events]


def test_a_usage_error_exits_2() -> None:
    result = run("http://127.0.0.1:1", "publish")
    assert result.returncode == 2
    assert "Missing argument" in result.stderr


def test_connection_refused_is_one_line_naming_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = run(url, "publish", "topic", "1")
    assert result.returncode == 1
    assert result.stderr == f"pgcast: cannot connect to {url}: connection refused\n"


EXACT = '{"n": 18446744073709551616, "d": 0.1000000000000000000001, "e": 1e400}'


def test_numbers_keep_every_digit_through_publish_and_tail(cli_server: ServerProcess) -> None:
    published = run(cli_server.url, "publish", "exact.cli", EXACT)
    piped = run(cli_server.url, "publish", "exact.cli", stdin=EXACT + "\n")
    assert (published.returncode, piped.returncode) == (0, 0), published.stderr + piped.stderr
    for output in ("jsonl", "pretty"):
        tail = run(
            cli_server.url,
            "tail",
            "exact.cli",
            "--from",
            "earliest",
            "--no-follow",
            "--output",
            output,
        )
        assert tail.returncode == 0, tail.stderr
        lines = tail.stdout.splitlines()
        assert len(lines) == 2
        for line in lines:
            if output == "jsonl":
                assert exact(line)["data"] == exact(EXACT)
            assert "18446744073709551616" in line
            assert "0.1000000000000000000001" in line


def test_a_nul_on_line_2_publishes_line_1_and_names_the_place(cli_server: ServerProcess) -> None:
    result = run(cli_server.url, "publish", "nul.cli", stdin='1\n{"a": "x\\u0000"}\n3\n')
    assert result.returncode == 1
    assert result.stderr.startswith("pgcast: line 2: the string at $.a holds a NUL character")
    assert [e["data"] for e in stored(cli_server, "nul.cli")] == [1]
