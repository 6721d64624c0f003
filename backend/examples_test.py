"""The examples of README.md and docs/ run as written, against a real server.

A fenced block right after `<!-- example: examples/NAME -->` must be exactly that file,
and every file under examples/ is run here. Every block of README.md says what it is: an
example, or `<!-- not run: why -->`.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import jwt
import orjson
import psutil
import pytest

from backend.testing import postgres
from backend.testing.cli import FAST_QUEUES, Lines
from backend.testing.security import SECRET
from backend.testing.server import ServerProcess, start_server

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
EXAMPLE = re.compile(r"<!-- example: (\S+) -->")
NOT_RUN = re.compile(r"<!-- not run: .+ -->")


def fenced_blocks(text: str) -> Iterator[tuple[str, str]]:
    """(the line before, the body) of every fenced code block."""
    lines = text.splitlines(keepends=True)
    start = 0
    while start < len(lines):
        if not lines[start].startswith("```"):
            start += 1
            continue
        end = start + 1
        while not lines[end].startswith("```"):
            end += 1
        yield (lines[start - 1].strip() if start else ""), "".join(lines[start + 1 : end])
        start = end + 1


def test_every_readme_block_is_an_example_or_says_why_it_is_not_run() -> None:
    blocks = list(fenced_blocks((ROOT / "README.md").read_text()))
    assert blocks, "README.md has no code blocks"
    for before, body in blocks:
        assert EXAMPLE.fullmatch(before) or NOT_RUN.fullmatch(before), f"unmarked: {body}"


def test_quoted_examples_are_the_files_and_every_file_is_quoted() -> None:
    quoted = set()
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for before, body in fenced_blocks(path.read_text()):
            if match := EXAMPLE.fullmatch(before):
                assert (ROOT / match[1]).read_text() == body, f"{path.name}: {match[1]} differs"
                quoted.add(match[1])
    # examples/python/ holds whole programs that docs/python.md links to rather than quotes;
    # backend/services/examples_test.py runs them.
    files = [p for p in EXAMPLES.iterdir() if p.is_file()]
    assert sorted(quoted) == sorted(f"examples/{p.name}" for p in files)


@pytest.fixture(scope="module")
def example_env() -> Iterator[dict[str, str]]:
    """The environment of a reader who ran `make run`: a server, pgcast on the PATH."""
    url = anyio.run(postgres.clone_template)
    try:
        with start_server(url, extra_env=FAST_QUEUES) as server:
            yield _reader_env(server)
    finally:
        anyio.run(postgres.drop, url)


def _with_pgcast(**values: str) -> dict[str, str]:
    """This environment, minus PGCAST_* settings, with `pgcast` on the PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGCAST_")}
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    env.update(values)
    return env


def _reader_env(server: ServerProcess) -> dict[str, str]:
    return _with_pgcast(PGCAST_URL=server.url, DATABASE_URL=server.database_url)


def sh(env: dict[str, str], command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=20
    )


@pytest.mark.external
@pytest.mark.timeout(120)  # about 15 s on an idle machine: a dozen CLI and curl processes
def test_the_examples_run_against_a_server(example_env: dict[str, str]) -> None:
    http = sh(example_env, "sh examples/http.sh")
    published = orjson.loads(http.stdout.split("\n", 1)[0])["events"][0]
    assert published["data"] == {"id": 42}, http.stderr
    envelope = orjson.dumps(published).decode()
    assert f"event: created\ndata: {envelope}\n" in http.stdout  # the SSE stream
    assert http.stdout.endswith('\n{"id":42}\n'), http.stderr  # pgcast tail | jq

    orders = sh(example_env, "pgcast db shell < examples/orders.sql")
    assert orders.returncode == 0, orders.stderr
    shipped = sh(example_env, "pgcast tail orders.shipped --from earliest --no-follow")
    assert [orjson.loads(line)["data"] for line in shipped.stdout.splitlines()] == [{"id": 42}]

    capture = sh(example_env, "sh examples/capture.sh")
    assert (capture.returncode, capture.stdout.splitlines()[-1]) == (0, '["status"]'), capture

    enqueued = sh(example_env, "pgcast db shell < examples/enqueue.sql")
    assert enqueued.returncode == 0, enqueued.stderr
    worker = subprocess.Popen(
        ["sh", "examples/queue.sh"],
        cwd=ROOT,
        env=example_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert worker.stdout is not None
    assert worker.stderr is not None
    lines = Lines(worker.stdout)
    sent: set[str] = set()
    try:
        while len(sent) < 2:
            sent.add(lines.wait_for(lambda line: line.startswith("sending")).split()[-1])
    except queue.Empty:
        pass  # reported below, with what the worker said
    finally:
        for child in psutil.Process(worker.pid).children():  # the worker, as Ctrl-C would
            child.send_signal(signal.SIGINT)
        status = worker.wait(15)
        said = worker.stderr.read()
        worker.stdout.close()
        worker.stderr.close()
    assert sent == {"ann@example.com", "bob@example.com"}, f"stdout {lines.seen}, stderr {said}"
    assert status == 0

    python = sh(example_env, "python examples/subscribe.py")
    assert python.returncode == 0, python.stderr
    assert "orders.created {'id': 43}" in python.stdout
    assert python.stdout.splitlines()[-1].endswith("{'to': 'cy@example.com'}")

    sse = sh(example_env, "sh examples/sse.sh")
    frames = [orjson.loads(line[6:]) for line in sse.stdout.splitlines() if line[:6] == "data: "]
    created = [frame for frame in frames if frame["type"] == "created"]
    assert len(frames) > len(created) > 1, sse.stdout
    assert created[-1]["data"] == {"id": 42}
    assert orjson.loads(sse.stdout.splitlines()[-1])["events"], "the long-poll found nothing"

    ws = sh(example_env, "python examples/ws_client.py")
    assert ws.returncode == 0, ws.stderr
    assert len(ws.stdout.splitlines()) == 2, ws.stdout
    assert ws.stdout.splitlines()[0] == f"{published['id']} orders.created {{'id': 42}}"

    first, again = (sh(example_env, "sh examples/publish-once.sh") for _ in range(2))
    assert orjson.loads(first.stdout)["events"] == orjson.loads(again.stdout)["events"]

    worked = sh(example_env, "sh examples/http-worker.sh")
    assert worked.returncode == 0, worked.stderr
    enqueued_id = orjson.loads(worked.stdout.splitlines()[0])["messages"][0]["id"]
    stats, dead, requeued = (orjson.loads(line) for line in worked.stdout.splitlines()[-3:])
    assert f"sending message {enqueued_id} attempt 1 to a@example.com" in worked.stdout
    assert (stats["ready"], stats["leased"], stats["dead"]) == (0, 0, 0)
    assert (dead, requeued) == ({"messages": []}, {"requeued": 0})


def test_the_role_tokens_grant_what_security_md_says() -> None:
    result = sh(_with_pgcast(AUTH_SECRET=SECRET), "sh examples/tokens.sh")
    assert result.returncode == 0, result.stderr
    grants = {
        claims["sub"]: claims["pgcast"]
        for claims in (
            jwt.decode(line, SECRET, algorithms=["HS256"]) for line in result.stdout.split()
        )
    }
    none = {"publish": [], "subscribe": [], "consume": [], "admin": False}
    assert grants == {
        "shop": {**none, "publish": ["orders.>", "emails"]},
        "dashboard": {**none, "subscribe": ["orders.>"]},
        "mailer": {**none, "consume": ["emails"]},
        "ops": {**none, "subscribe": [">"], "admin": True},
    }
