"""Fault injection for external tests: kill and restart servers, cut the LISTEN connection.

Servers here run with a 1 s SSE heartbeat and a fast probe, so followers notice dead links
within seconds and the LISTEN connection comes back quickly.
"""

from __future__ import annotations

import resource
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import anyio
import httpx
import psutil

from backend.connectors.database import LISTENER_APPLICATION_NAME, connect
from backend.testing.server import ServerProcess, spawn

FAULT_ENV = {
    "HEARTBEAT_SECONDS": "1",
    "PROBE_INTERVAL_SECONDS": "0.5",
    "PROBE_TIMEOUT_SECONDS": "1",
    "SSE_RETRY_MS": "200",
}
LOG_TAIL_LINES = 40


class Restartable:
    """A `pgcast serve` process that can be SIGKILLed and started again on the same port."""

    def __init__(self, database_url: str, extra_env: dict[str, str] | None = None) -> None:
        self.env = {**FAULT_ENV, **(extra_env or {})}
        self.server: ServerProcess = spawn(database_url, extra_env=self.env)
        self.kills = 0

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def pid(self) -> int:
        return self.server.process.pid

    def kill(self) -> None:
        self.server.stop(signal.SIGKILL)
        self.kills += 1

    def restart(self) -> None:
        """Start a new process on the same port (blocks until /healthz answers)."""
        old = self.server
        self.server = spawn(old.database_url, port=old.port, extra_env=self.env)

    def close(self) -> None:
        """Stop the process; print its log tail (pytest shows it when the test fails)."""
        self.server.stop()
        if self.server.log_path.exists():
            lines = self.server.log().splitlines()[-LOG_TAIL_LINES:]
            print(f"--- server {self.server.url} log tail ---", *lines, sep="\n")
        self.server.log_path.unlink(missing_ok=True)


async def kill_listener(database_url: str) -> int:
    """Terminate the LISTEN connections of every server on this database; how many."""
    name = database_url.rsplit("/", 1)[1]
    conn = await connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT pg_terminate_backend(pid) AS done FROM pg_stat_activity"
            " WHERE datname = $1 AND application_name = $2",
            name,
            LISTENER_APPLICATION_NAME,
        )
    finally:
        await conn.close()
    return sum(1 for row in rows if row["done"])


async def listener_count(database_url: str) -> int:
    name = database_url.rsplit("/", 1)[1]
    conn = await connect(database_url)
    try:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND application_name = $2",
            name,
            LISTENER_APPLICATION_NAME,
        )
    finally:
        await conn.close()
    return count


async def wait_until(
    check: Callable[[], Awaitable[bool]], what: str, *, within: float = 30, every: float = 0.1
) -> float:
    """Poll `check` until it is true; the seconds it took, or AssertionError naming `what`."""
    started = time.monotonic()
    while time.monotonic() - started < within:
        if await check():
            return time.monotonic() - started
        await anyio.sleep(every)
    raise AssertionError(f"{what}: not true after {within} s")


async def status(url: str, path: str = "/readyz") -> int:
    """The status of a GET, or 0 when the server cannot be reached."""
    try:
        async with httpx.AsyncClient(timeout=2) as client:
            return (await client.get(f"{url}{path}")).status_code
    except httpx.TransportError:
        return 0


def ready(url: str) -> Callable[[], Awaitable[bool]]:
    """A check for `wait_until`: /readyz answers 200."""

    async def check() -> bool:
        return await status(url) == 200

    return check


async def gauge(url: str, name: str) -> float:
    """One sample from /metrics (the first line starting with `name`), or -1."""
    async with httpx.AsyncClient(timeout=5) as client:
        text = (await client.get(f"{url}/metrics")).text
    for line in text.splitlines():
        if line.startswith(name):
            return float(line.split()[-1])
    return -1.0


def rss(pid: int) -> int:
    return int(psutil.Process(pid).memory_info().rss)


def raise_open_files(wanted: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE towards `wanted` (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return max(soft, target)


def spawn_module(module: str, *args: str | Path) -> subprocess.Popen[bytes]:
    """`python -m MODULE ARGS...` with its output discarded."""
    return subprocess.Popen(
        [sys.executable, "-m", module, *map(str, args)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def kill_all(processes: Sequence[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.kill()
    for process in processes:
        process.wait(10)
