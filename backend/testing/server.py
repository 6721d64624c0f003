"""Start and stop a real `pgcast serve` process for external tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast, get_args

import httpx

from backend.connectors.embedded import free_port as free_port
from backend.core.allocator import Choice, environment, jemalloc_library

PORT_ATTEMPTS = 3
TCP_LISTEN = "0A"  # the state column of /proc/net/tcp


@dataclass
class ServerProcess:
    """A running server: its base URL, process and captured output file."""

    url: str
    port: int
    database_url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        """Signal the server and wait for it; returns the exit status."""
        return stop_process(self.process, sig, timeout)


def stop_process(
    process: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 15
) -> int:
    """Send `sig`, wait up to `timeout` seconds, then kill; returns the exit status."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def wait_healthy(url: str, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited early with status {process.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        time.sleep(0.05)
    raise TimeoutError(f"server at {url} did not become healthy in {timeout} s")


def spawn(
    database_url: str, *, port: int | None = None, extra_env: dict[str, str] | None = None
) -> ServerProcess:
    """Start `python -m backend serve` and wait until /healthz answers 200.

    Without a `port`, a free one is picked; another test's server may take it first (the
    port is free only until someone binds it), and then /healthz would answer from that
    server. So the port must be held by this process, or another port is tried."""
    for _ in range(PORT_ATTEMPTS - 1 if port is None else 0):
        server = _start(database_url, free_port(), extra_env)
        if _listens_on(server.process.pid, server.port):
            return server
        server.stop(signal.SIGKILL)
        server.log_path.unlink(missing_ok=True)
    server = _start(database_url, port or free_port(), extra_env)
    if not _listens_on(server.process.pid, server.port):
        server.stop(signal.SIGKILL)
        raise RuntimeError(f"port {server.port} is held by another process, not the server")
    return server


def under_allocator(env: dict[str, str]) -> dict[str, str]:
    """The environment `serve` would re-execute itself with, given at once: the same
    allocator without a second interpreter start per server."""
    choice = env.get("ALLOCATOR", "auto")
    if choice not in get_args(Choice):
        return env  # `serve` reports the bad setting itself
    return environment(cast(Choice, choice), env, jemalloc_library()) or env


def _start(database_url: str, port: int, extra_env: dict[str, str] | None) -> ServerProcess:
    env = {**os.environ, "DATABASE_URL": database_url, "PORT": str(port), "HOST": "127.0.0.1"}
    env.update(extra_env or {})
    env = under_allocator(env)
    log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"pgcast-server-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "backend", "serve"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = ServerProcess(f"http://127.0.0.1:{port}", port, database_url, process, log_path, env)
    try:
        wait_healthy(server.url, process)
    except BaseException:
        server.stop(signal.SIGKILL)
        raise
    return server


def _listens_on(pid: int, port: int) -> bool:
    """Whether process `pid` holds the socket listening on `port`, on any address (Linux
    /proc: the listener's inode in /proc/net/tcp or tcp6 among the process's open sockets)."""
    suffix = f":{port:04X}"
    listening = {
        fields[9]
        for table in ("/proc/net/tcp", "/proc/net/tcp6")
        for fields in (line.split() for line in Path(table).read_text().splitlines()[1:])
        if fields[1].endswith(suffix) and fields[3] == TCP_LISTEN
    }
    wanted = {f"socket:[{inode}]" for inode in listening}
    try:
        descriptors = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:  # the process is gone
        return False
    for descriptor in descriptors:
        with contextlib.suppress(OSError):  # closed meanwhile
            if os.readlink(descriptor) in wanted:
                return True
    return False


@contextlib.contextmanager
def start_server(
    database_url: str, *, port: int | None = None, extra_env: dict[str, str] | None = None
) -> Iterator[ServerProcess]:
    """A running server for the block; SIGTERM and wait afterwards."""
    server = spawn(database_url, port=port, extra_env=extra_env)
    try:
        yield server
    finally:
        server.stop()
        server.log_path.unlink(missing_ok=True)
