"""The system under test: a durable embedded PostgreSQL and `pgcast serve` processes."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx

from backend.connectors.embedded import EmbeddedPostgres
from backend.connectors.migrations import upgrade
from backend.testing.server import ServerProcess, spawn

# The server as one would run it in production: no per-request INFO logging.
SERVER_ENV = {"LOG_LEVEL": "WARNING", "MAX_CONNECTIONS": "19500"}  # room for 19,000 subscribers
ROOT = Path(__file__).resolve().parent.parent

SCHEMA_SQL = """
CREATE SCHEMA IF NOT EXISTS bench;
CREATE TABLE IF NOT EXISTS bench.raw_events (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    topic text NOT NULL,
    data jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS bench.jobs (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    payload jsonb NOT NULL,
    enqueued_at timestamptz NOT NULL DEFAULT now()
) WITH (autovacuum_enabled = false);
"""
# The queue baseline's table is never analyzed: an autoanalyze of it while empty, between
# two runs, made PostgreSQL plan every claim as a sort of the whole table (1,300 jobs/s
# at 20,000 jobs in two full runs, against 7,000-9,000 with the index scan it otherwise
# gets). The baseline is the loop as it runs when it runs well.


@dataclass
class Stack:
    """One durable PostgreSQL (fsync on) in a temporary directory, migrated."""

    postgres: EmbeddedPostgres
    url: str
    workdir: Path

    @classmethod
    def start(cls) -> Stack:
        compile_sources()
        workdir = Path(tempfile.mkdtemp(prefix="pgcast-bench-"))
        postgres = EmbeddedPostgres(workdir / "pg", durable=True)
        url = postgres.start()
        upgrade(url)
        asyncio.run(execute(url, SCHEMA_SQL))
        return cls(postgres, url, workdir)

    @property
    def postmaster_pid(self) -> int | None:
        try:
            return int((self.postgres.pgdata / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def version(self) -> str:
        return asyncio.run(fetchval(self.url, "SHOW server_version"))

    shared: ServerProcess | None = None

    @contextlib.contextmanager
    def server(self, workers: int = 1) -> Iterator[ServerProcess]:
        """A fresh `pgcast serve` for one scenario (the shared one, if set and one worker)."""
        if self.shared is not None and workers == 1:
            yield self.shared
            return
        env = {**SERVER_ENV, "WORKERS": str(workers)}
        process = spawn(self.url, extra_env=env)
        try:
            yield process
        finally:
            _stop(process)

    def share_one_server(self) -> None:
        """Quick runs: one server for every scenario (saves a start per scenario)."""
        self.shared = spawn(self.url, extra_env=SERVER_ENV)

    def destroy(self) -> None:
        if self.shared is not None:
            _stop(self.shared)
            self.shared = None
        self.postgres.destroy()
        shutil.rmtree(self.workdir, ignore_errors=True)


def compile_sources() -> None:
    """Write the bytecode files of pgcast and of the raw servers before anything starts,
    so every server loads its modules from them, as a deployed server does (Python reads
    them even under PYTHONDONTWRITEBYTECODE). A server that compiles its modules from
    source at start-up frees the compiler's memory, and its first few thousand
    connections fill those holes: an idle SSE connection looked 1 KiB smaller that way."""
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(ROOT / "backend"), str(ROOT / "bench")],
        check=True,
    )


def _stop(process: ServerProcess) -> None:
    process.stop()
    process.log_path.unlink(missing_ok=True)


async def execute(url: str, sql: str, *args: object) -> str:
    conn = await asyncpg.connect(url, timeout=30)
    try:
        return str(await conn.execute(sql, *args))
    finally:
        await conn.close()


async def fetchval(url: str, sql: str, *args: object) -> str:
    conn = await asyncpg.connect(url, timeout=30)
    try:
        return str(await conn.fetchval(sql, *args))
    finally:
        await conn.close()


def head(server: ServerProcess, topic: str) -> str:
    """The current log head as a resume point, so subscribers miss nothing after it."""
    answer = httpx.get(f"{server.url}/topics/{topic}/events", params={"after": "latest"})
    answer.raise_for_status()
    return str(answer.json()["next"])


def publish_batches(server: ServerProcess, topic: str, events: int, padding: str) -> None:
    """Publish `events` events over HTTP in arrays of up to 100 (one connection)."""
    with httpx.Client(base_url=server.url, timeout=60) as client:
        sent = 0
        while sent < events:
            size = min(100, events - sent)
            body = [{"data": {"ts": time.time(), "pad": padding}}] * size
            client.post(f"/topics/{topic}/events", json=body).raise_for_status()
            sent += size
