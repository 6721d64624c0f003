"""`pgcast tail` as a real process: live pipes, resume across a restart, replay, signals."""

from __future__ import annotations

import signal
import subprocess
import sys
from typing import Any

import httpx
import orjson
import pytest

from backend.testing.cli import Lines, eventually, finish, run, start
from backend.testing.server import ServerProcess, spawn

pytestmark = pytest.mark.external


def publish(server: ServerProcess, topic: str, *values: Any) -> list[str]:
    body = [{"data": value} for value in values]
    response = httpx.post(f"{server.url}/topics/{topic}/events", json=body, timeout=10)
    assert response.status_code == 201, response.text
    return [event["id"] for event in response.json()["events"]]


def head(server: ServerProcess) -> str:
    response = httpx.get(f"{server.url}/events?topic=x&after=latest&limit=1", timeout=10)
    return str(response.json()["next"])


def ids(lines: list[str]) -> list[str]:
    return [orjson.loads(line)["id"] for line in lines]


def live_subscriptions(server: ServerProcess) -> int:
    """Subscriptions the server's hub delivers to live right now (not catching up)."""
    gauges = {}
    for line in httpx.get(f"{server.url}/metrics", timeout=10).text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("pgcast_subscriptions", "pgcast_lagging_subscribers"):
            gauges[name] = float(value)
    return int(gauges["pgcast_subscriptions"] - gauges["pgcast_lagging_subscribers"])


def test_a_piped_tail_gets_events_live_and_exits_0_on_sigint(cli_server: ServerProcess) -> None:
    # The tail writes into a pipe read by another process, which echoes line by line.
    echo = "import sys\nfor line in sys.stdin: print(line, end='', flush=True)"
    others = live_subscriptions(cli_server)
    tail = start(cli_server.url, "tail", "live.*", "--from", head(cli_server))
    reader = subprocess.Popen(
        [sys.executable, "-c", echo], stdin=tail.stdout, stdout=subprocess.PIPE, text=True
    )
    assert tail.stdout is not None
    assert reader.stdout is not None
    tail.stdout.close()
    lines = Lines(reader.stdout)
    try:
        # Starting a Python process can take seconds on a busy machine: publish only once
        # the tail's subscription is live, so each wait below measures delivery alone.
        eventually(lambda: live_subscriptions(cli_server) > others, timeout=30)
        for n in range(3):
            (event_id,) = publish(cli_server, "live.a", {"n": n})
            envelope = orjson.loads(lines.next(timeout=10))
            assert envelope["id"] == event_id
            assert envelope["topic"] == "live.a"
            assert envelope["data"] == {"n": n}
        tail.send_signal(signal.SIGINT)
        assert tail.wait(10) == 0
        assert tail.stderr is not None
        assert tail.stderr.read() == ""  # no traceback, no "Aborted!"
        assert lines.rest() == []
    finally:
        finish(tail)
        reader.wait(10)
        finish(reader)


def test_no_follow_replays_to_the_current_end_and_exits_0(cli_server: ServerProcess) -> None:
    published = publish(cli_server, "replay.a", *range(5)) + publish(cli_server, "replay.b", 5)
    publish(cli_server, "other", 0)
    result = run(cli_server.url, "tail", "replay.>", "--from", "earliest", "--no-follow")
    assert result.returncode == 0, result.stderr
    assert ids(result.stdout.splitlines()) == published
    assert [orjson.loads(line)["data"] for line in result.stdout.splitlines()] == list(range(6))


def test_limit_exits_0_after_n_events_and_a_reset_is_reported_on_stderr(
    cli_server: ServerProcess,
) -> None:
    a = publish(cli_server, "limit.a", 1, 2)
    b = publish(cli_server, "limit.b", 3)
    publish(cli_server, "limit.a", 4)
    # An id beyond the head: the server resets in-band to the oldest event; the tail goes on.
    unknown = "9" * 15
    result = run(cli_server.url, "tail", "limit.a", "limit.b", "--from", unknown, "--limit", "3")
    assert result.returncode == 0, result.stderr
    assert ids(result.stdout.splitlines()) == a + b
    (notice,) = result.stderr.splitlines()
    assert notice.startswith("pgcast: stream reset (unknown): continuing from the oldest")


def test_tail_resumes_across_a_server_restart_without_gap_or_duplicate(
    cli_server: ServerProcess,
) -> None:
    before = publish(cli_server, "restart", 1, 2)
    tail = start(cli_server.url, "tail", "restart", "--from", "earliest")
    assert tail.stdout is not None
    assert tail.stderr is not None
    out, err = Lines(tail.stdout), Lines(tail.stderr)
    try:
        out.take(2)
        more = publish(cli_server, "restart", 3)
        out.take(1)
        cli_server.stop()
        err.wait_for(lambda line: "connection lost" in line)
        # The same database on the same port; the fixture stops the replacement at the end.
        replacement = spawn(cli_server.database_url, port=cli_server.port, extra_env=cli_server.env)
        cli_server.process, cli_server.log_path = replacement.process, replacement.log_path
        after = publish(cli_server, "restart", 4, 5)
        out.take(2, timeout=15)
        err.wait_for(lambda line: line == "pgcast: reconnected")
        # One more event: the next line must be exactly it, so nothing was repeated.
        sentinel = publish(cli_server, "restart", 6)
        out.take(1)
        assert ids(out.seen) == before + more + after + sentinel
        assert err.seen == ["pgcast: connection lost; reconnecting...", "pgcast: reconnected"]
    finally:
        finish(tail)


def test_live_tail_sse_and_replay_print_the_same_compact_json(cli_server: ServerProcess) -> None:
    before = head(cli_server)
    data = {"id": 42, "items": [1, {"sku": "a b"}], "note": "x, y: z"}
    (event_id,) = publish(cli_server, "compact.a", data)
    live = run(cli_server.url, "tail", "compact.a", "--from", before, "--limit", "1")
    paged = run(cli_server.url, "tail", "compact.a", "--from", before, "--no-follow")
    with httpx.stream(
        "GET",
        f"{cli_server.url}/topics/compact.a/events?after={before}",
        headers={"Accept": "text/event-stream"},
        timeout=10,
    ) as response:
        sse_data = next(line for line in response.iter_lines() if line.startswith("data: "))
    expected = orjson.dumps(orjson.loads(paged.stdout)).decode()
    assert live.returncode == paged.returncode == 0, live.stderr + paged.stderr
    assert live.stdout == paged.stdout == expected + "\n"
    assert sse_data == "data: " + expected
    assert orjson.loads(expected)["id"] == event_id
    # jsonb orders keys by length; the spaces inside the string are the only ones left.
    assert '"data":{"id":42,"note":"x, y: z","items":[1,{"sku":"a b"}]}' in expected
