"""`pgcast queue ...` as real processes: workers that retry, dead-letter and drain on SIGTERM."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from backend.testing.cli import Lines, eventually, finish, run, start
from backend.testing.server import ServerProcess

pytestmark = pytest.mark.external

# Records its attempt, then fails on the first attempt only.
FLAKY = """
import os, sys
open(sys.argv[1], "a").write(os.environ["PGCAST_ATTEMPT"] + " " + sys.stdin.read() + "\\n")
if os.environ["PGCAST_ATTEMPT"] == "1":
    sys.exit("first attempt fails")
"""
# Marks its start, works longer than half its 1 s lease, then marks its end.
SLOW = """
import pathlib, sys, time
pathlib.Path(sys.argv[1]).write_text("started")
time.sleep(1.5)
pathlib.Path(sys.argv[2]).write_text("finished")
"""


def enqueue(server: ServerProcess, queue: str, *items: dict[str, Any]) -> list[str]:
    response = httpx.post(f"{server.url}/queues/{queue}/messages", json=list(items), timeout=10)
    assert response.status_code == 201, response.text
    return [m["id"] for m in response.json()["messages"]]


def stats(server: ServerProcess, queue: str) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(f"{server.url}/queues/{queue}", timeout=10).json()
    return body


def settled(server: ServerProcess, queue: str) -> bool:
    figures = stats(server, queue)
    return bool(figures["ready"] == figures["leased"] == figures["delayed"] == 0)


def test_a_failed_command_is_retried_and_the_message_acked(
    cli_server: ServerProcess, tmp_path: Path
) -> None:
    log = tmp_path / "attempts"
    (message_id,) = enqueue(cli_server, "flaky", {"data": {"job": 1}, "max_attempts": 3})
    worker = start(
        cli_server.url, "queue", "work", "flaky", "--", sys.executable, "-c", FLAKY, str(log)
    )
    try:
        eventually(lambda: settled(cli_server, "flaky") and log.exists())
        attempts = [line.split(" ", 1) for line in log.read_text().splitlines()]
        assert [attempt for attempt, _ in attempts] == ["1", "2"]
        message = orjson.loads(attempts[1][1])
        assert (message["id"], message["data"], message["attempt"]) == (message_id, {"job": 1}, 2)
        assert "lease" in message
        assert stats(cli_server, "flaky")["dead"] == 0
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(10) == 0
    finally:
        finish(worker)


def test_a_command_that_always_fails_is_dead_lettered_with_its_stderr(
    cli_server: ServerProcess,
) -> None:
    (message_id,) = enqueue(cli_server, "doomed", {"data": "x", "max_attempts": 2})
    command = [sys.executable, "-c", "import sys; sys.exit('boom: cannot do it')"]
    worker = start(cli_server.url, "queue", "work", "doomed", "--concurrency", "2", "--", *command)
    try:
        eventually(lambda: stats(cli_server, "doomed")["dead"] == 1)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(10) == 0
    finally:
        finish(worker)
    dead = httpx.get(f"{cli_server.url}/queues/doomed/dead", timeout=10).json()["messages"]
    assert [(m["id"], m["attempt"]) for m in dead] == [(message_id, 2)]
    assert "boom: cannot do it" in dead[0]["last_error"]
    listed = run(cli_server.url, "queue", "dead", "doomed")
    assert listed.returncode == 0, listed.stderr
    assert [orjson.loads(line)["id"] for line in listed.stdout.splitlines()] == [message_id]


def test_sigterm_lets_the_running_command_finish_then_acks_and_exits_0(
    cli_server: ServerProcess, tmp_path: Path
) -> None:
    started, finished = tmp_path / "started", tmp_path / "finished"
    enqueue(cli_server, "slow", {"data": 1})
    worker = start(
        cli_server.url,
        "queue",
        "work",
        "slow",
        "--lease",
        "1",
        "--",
        sys.executable,
        "-c",
        SLOW,
        str(started),
        str(finished),
    )
    try:
        eventually(started.exists)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(15) == 0
        assert finished.read_text() == "finished"
        # Acked, so the lease was extended past its 1 s while the command ran.
        assert settled(cli_server, "slow")
        assert stats(cli_server, "slow")["dead"] == 0
    finally:
        finish(worker)


def test_a_command_that_cannot_start_is_refused_at_once(cli_server: ServerProcess) -> None:
    enqueue(cli_server, "norun", {"data": 1, "max_attempts": 1})
    missing = run(cli_server.url, "queue", "work", "norun", "--", "/no/such/command", "x")
    assert missing.returncode == 2
    assert missing.stderr == "pgcast: cannot run /no/such/command: No such file or directory\n"
    assert stats(cli_server, "norun")["ready"] == 1  # no message was taken for it
    unknown = run(cli_server.url, "queue", "work", "norun", "--", "no-such-command-anywhere")
    assert (unknown.returncode, unknown.stderr) == (
        2,
        "pgcast: cannot run no-such-command-anywhere: not found on PATH\n",
    )
    refused = run(cli_server.url, "queue", "work", "bad..q", "--", "true")
    assert refused.returncode == 2  # a name no queue can have: a usage error, found locally
    assert refused.stderr.startswith("pgcast: ")
    assert refused.stderr.count("\n") == 1, refused.stderr  # one line, no traceback


def test_a_command_that_stops_being_runnable_is_reported_and_in_the_nack(
    cli_server: ServerProcess, tmp_path: Path
) -> None:
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/sh\ncat >/dev/null\n")
    script.chmod(0o755)
    enqueue(cli_server, "gone", {"data": 0})
    worker = start(cli_server.url, "queue", "work", "gone", "--", str(script))
    try:
        errors = Lines(worker.stderr)  # type: ignore[arg-type]
        eventually(lambda: settled(cli_server, "gone"))  # the worker runs and took one
        script.chmod(0o644)
        (message_id,) = enqueue(cli_server, "gone", {"data": 1, "max_attempts": 1})
        said = errors.wait_for(lambda line: "cannot run" in line)
        assert said == (
            f"pgcast: message {message_id} (attempt 1): cannot run {script}: Permission denied"
        )
        eventually(lambda: stats(cli_server, "gone")["dead"] == 1)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(10) == 0
    finally:
        finish(worker)
    (dead,) = httpx.get(f"{cli_server.url}/queues/gone/dead", timeout=10).json()["messages"]
    assert dead["last_error"] == f"cannot run {script}: Permission denied"


def test_the_readme_example_command_gets_the_message_on_stdin(cli_server: ServerProcess) -> None:
    example = Path(__file__).parents[3] / "examples" / "send-email.sh"
    (message_id,) = enqueue(cli_server, "emails", {"data": {"to": "ann@example.com"}})
    worker = start(cli_server.url, "queue", "work", "emails", "--", str(example))
    try:
        printed = Lines(worker.stdout).next(timeout=15)  # type: ignore[arg-type]
        assert printed == f"sending message {message_id} attempt 1 to ann@example.com"
        eventually(lambda: settled(cli_server, "emails"))
        assert stats(cli_server, "emails")["dead"] == 0
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(10) == 0
    finally:
        finish(worker)


def test_enqueue_from_stdin_then_stats_and_requeue(cli_server: ServerProcess) -> None:
    made = run(cli_server.url, "queue", "enqueue", "batch", "--max-attempts", "1", stdin="1\n2\n")
    assert made.returncode == 0, made.stderr
    assert len(made.stdout.splitlines()) == 2
    shown = start(cli_server.url, "queue", "stats", "batch")
    missing = start(cli_server.url, "queue", "requeue", "batch", "999999")
    (shown_out, _), (_, missing_err) = (
        shown.communicate(timeout=20),
        missing.communicate(timeout=20),
    )
    assert shown.returncode == 0
    assert orjson.loads(shown_out)["ready"] == 2
    # The server's own message, on one line.
    assert missing.returncode == 1
    assert missing_err == "pgcast: no message 999999 in queue 'batch'\n"
