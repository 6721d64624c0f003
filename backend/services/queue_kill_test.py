"""Consumer processes killed at random: every message ends acked exactly once or dead."""

from __future__ import annotations

import random
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest

from backend.connectors.database import connect
from backend.testing.engine import running_engine

pytestmark = [pytest.mark.integrated, pytest.mark.anyio]

MESSAGES = 150
WORKERS = 3


def _spawn(url: str, log: Path, seed: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "backend.testing.queue_worker",
            url,
            "kill",
            str(log),
            "0.2",
            str(seed),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def _unfinished(url: str) -> int:
    conn = await connect(url)
    try:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM pgcast.queue_messages WHERE state NOT IN ('acked', 'dead')"
        )
        return count
    finally:
        await conn.close()


async def test_sigkilled_consumers_lose_nothing_and_ack_nothing_twice(
    database_url: str, tmp_path: Path
) -> None:
    async with running_engine(database_url) as engine:
        messages = engine.queues
        await messages.enqueue(
            [messages.message("kill", i, max_attempts=4) for i in range(MESSAGES)]
        )
    rng = random.Random(7)
    logs = [tmp_path / f"worker-{i}.log" for i in range(WORKERS)]
    workers = [_spawn(database_url, logs[i], i) for i in range(WORKERS)]
    kills = 0
    try:
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            await anyio.sleep(0.4)
            victim = rng.randrange(WORKERS)
            workers[victim].kill()
            workers[victim].wait()
            kills += 1
            workers[victim] = _spawn(database_url, logs[victim], 100 + kills)
        with anyio.fail_after(40):
            while await _unfinished(database_url):
                await anyio.sleep(0.2)
    finally:
        for worker in workers:
            worker.kill()
            worker.wait()
    logged = [int(line) for log in logs if log.exists() for line in log.read_text().split()]
    conn = await connect(database_url)
    try:
        rows = await conn.fetch("SELECT id, state, attempt FROM pgcast.queue_messages")
    finally:
        await conn.close()
    states = {r["id"]: r["state"] for r in rows}
    assert len(states) == MESSAGES
    assert set(states.values()) <= {"acked", "dead"}
    assert len(logged) == len(set(logged)), "a message was acked twice"
    assert set(logged) <= {i for i, s in states.items() if s == "acked"}
    assert all(r["attempt"] <= 4 for r in rows)
    assert kills >= 5
