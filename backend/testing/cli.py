"""Run the `pgcast` client commands as real processes against a real server."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, Any

import anyio

from backend.testing import postgres
from backend.testing.server import ServerProcess, start_server

# Queue settings that make retries, reaping and polling fast enough for tests.
FAST_QUEUES = {
    "QUEUE_BACKOFF_BASE_SECONDS": "0.1",
    "QUEUE_BACKOFF_CAP_SECONDS": "0.5",
    "QUEUE_REAP_INTERVAL_SECONDS": "0.1",
    "POLL_INTERVAL_SECONDS": "0.3",
}
PGCAST = [sys.executable, "-m", "backend"]


@contextmanager
def fast_queue_server() -> Iterator[ServerProcess]:
    """A server with fast queue settings on a database of its own."""
    url = anyio.run(postgres.clone_template)
    try:
        with start_server(url, extra_env=FAST_QUEUES) as server:
            yield server
    finally:
        anyio.run(postgres.drop, url)


def cli_env(url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGCAST_")}
    env["PGCAST_URL"] = url
    return env


def run(
    url: str, *args: str, stdin: str | None = None, timeout: float = 20
) -> subprocess.CompletedProcess[str]:
    """`pgcast ARGS...` to completion, output captured as text."""
    return subprocess.run(
        [*PGCAST, *args],
        input=stdin,
        env=cli_env(url),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start(url: str, *args: str, **kwargs: Any) -> subprocess.Popen[str]:
    """`pgcast ARGS...` in the background with stdout and stderr as text pipes."""
    return subprocess.Popen(
        [*PGCAST, *args],
        env=cli_env(url),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def finish(process: subprocess.Popen[str], timeout: float = 10) -> int:
    """Kill the process if it still runs, close its pipes and return its status."""
    if process.poll() is None:
        process.kill()
    status = process.wait(timeout)
    for pipe in (process.stdin, process.stdout, process.stderr):
        if pipe is not None:
            pipe.close()
    return status


class Lines:
    """The lines of a pipe, read by a thread so that every wait can have a timeout."""

    def __init__(self, pipe: IO[str]) -> None:
        self.queue: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, args=(pipe,), daemon=True).start()

    def _read(self, pipe: IO[str]) -> None:
        for line in pipe:
            self.queue.put(line.rstrip("\n"))
        self.queue.put(None)

    def next(self, timeout: float = 10) -> str:
        line = self.queue.get(timeout=timeout)
        if line is None:
            raise EOFError("the pipe closed")
        self.seen.append(line)
        return line

    def take(self, count: int, timeout: float = 10) -> list[str]:
        return [self.next(timeout) for _ in range(count)]

    def rest(self, timeout: float = 10) -> list[str]:
        """Every line until the pipe closes."""
        lines = []
        while (line := self.queue.get(timeout=timeout)) is not None:
            lines.append(line)
        self.seen.extend(lines)
        return lines

    def wait_for(self, predicate: Callable[[str], bool], timeout: float = 10) -> str:
        deadline = time.monotonic() + timeout
        while True:
            line = self.next(max(0.01, deadline - time.monotonic()))
            if predicate(line):
                return line


def eventually(check: Callable[[], Any], timeout: float = 15, interval: float = 0.1) -> Any:
    """The first truthy result of `check()`, or AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not true after {timeout} s: last result {result!r}")
        time.sleep(interval)
