"""Starting pgcast and each peer fresh for one measurement, behind one small handle.

Every pub/sub system answers the same paths, so the same raw clients drive them all:
`POST /topics/<topic>/events` publishes and `GET /topics/<topic>/events` subscribes over
SSE. Peers run as separate processes (nginx, or the peers' virtualenv); `pid` is the
process whose CPU and memory are measured (nginx's single worker, not its master).
"""

from __future__ import annotations

import contextlib
import json
import selectors
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from backend.connectors.embedded import free_port
from backend.testing.server import stop_process, wait_healthy
from bench.machine import children_of
from bench.peers.install import PEERS_DIR, Nchan
from bench.scenarios.common import Context


class PeerError(RuntimeError):
    """A peer process did not start or broke its line protocol."""


@dataclass
class PubSub:
    """One running pub/sub system: where to connect, what to meter, what it answers."""

    name: str
    port: int
    pid: int
    ok: tuple[int, ...]
    resumes: bool = False

    def after(self, topic: str) -> str:
        """pgcast's log head (subscribers miss nothing after it); the others start at the
        newest message by themselves and ignore the parameter."""
        if self.resumes:
            return head_of(self.port, topic)
        return "0"


def head_of(port: int, topic: str) -> str:
    answer = httpx.get(f"http://127.0.0.1:{port}/topics/{topic}/events?after=latest")
    answer.raise_for_status()
    return str(answer.json()["next"])


def _wait_healthy(port: int, process: subprocess.Popen[bytes], name: str) -> None:
    try:
        wait_healthy(f"http://127.0.0.1:{port}", process)
    except (RuntimeError, TimeoutError) as exc:
        raise PeerError(f"{name}: {exc}") from None


@contextlib.contextmanager
def pgcast(ctx: Context) -> Iterator[PubSub]:
    with ctx.stack.server() as server:
        yield PubSub("pgcast", server.port, server.process.pid, (201,), resumes=True)


def nchan_conf(module: Path, prefix: Path, port: int) -> str:
    text = (PEERS_DIR / "nchan.conf").read_text()
    return (
        text.replace("@MODULE@", str(module))
        .replace("@PREFIX@", str(prefix))
        .replace("@PORT@", str(port))
    )


@contextlib.contextmanager
def nchan(found: Nchan) -> Iterator[PubSub]:
    """nginx + Nchan with its own prefix and configuration in a temporary folder."""
    assert found.nginx is not None
    assert found.module is not None
    prefix = Path(tempfile.mkdtemp(prefix="pgcast-bench-nchan-"))
    prefix.chmod(0o755)  # nginx's worker may run as another user when started by root
    port = free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(nchan_conf(found.module, prefix, port))
    process = subprocess.Popen(
        [str(found.nginx), "-p", str(prefix), "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_healthy(port, process, "nginx")
        workers = children_of(process.pid)
        if len(workers) != 1:
            raise PeerError(f"nginx started {len(workers)} workers, expected 1")
        yield PubSub("Nchan", port, workers[0], (201, 202))
    finally:
        stop_process(process, signal.SIGQUIT)
        shutil.rmtree(prefix, ignore_errors=True)


@contextlib.contextmanager
def broadcaster(python: Path, database_url: str) -> Iterator[PubSub]:
    """broadcaster_app.py on uvicorn, from the peers' virtualenv."""
    port = free_port()
    command = [str(python), str(PEERS_DIR / "broadcaster_app.py"), str(port), database_url]
    with tempfile.TemporaryFile(prefix="pgcast-bench-broadcaster-") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            try:
                _wait_healthy(port, process, "broadcaster")
            except PeerError as exc:
                log.seek(0)
                raise PeerError(f"{exc}: {log.read().decode(errors='replace')[-2000:]}") from None
            yield PubSub("broadcaster", port, process.pid, (201,))
        finally:
            stop_process(process)


class LineProcess:
    """A peer worker that reports JSON lines on stdout (see pgqueuer_worker.py)."""

    def __init__(self, command: list[str]) -> None:
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._selector = selectors.DefaultSelector()
        assert self.process.stdout is not None
        self._selector.register(self.process.stdout, selectors.EVENT_READ)

    @property
    def pid(self) -> int:
        return self.process.pid

    def expect(self, key: str, timeout: float) -> dict[str, Any]:
        """The next line that has `key`; raises with the process's stderr on failure."""
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if not self._selector.select(left):
                break
            line = self.process.stdout.readline()
            if not line:
                break
            message = json.loads(line)
            if key in message:
                return dict(message)
        stop_process(self.process)
        assert self.process.stderr is not None
        error = self.process.stderr.read().decode(errors="replace")[-2000:]
        self.stop()
        raise PeerError(f"{self.process.args!r}: no {key!r} within {timeout:.0f} s\n{error}")

    def stop(self) -> None:
        stop_process(self.process)
        self._selector.close()
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()
