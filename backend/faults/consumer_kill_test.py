"""Scenario 4: queue consumers are SIGKILLed in the middle of their messages.

Fault: SIGKILL of a random busy consumer process (one that has started a message, so it
holds some) every 0.4 s, then a fresh one in its place. The consumers work through the
server: `pgcast queue work` (the CLI, running a shell command per message that records
the message id) and `backend.testing.http_worker` (an HTTP consumer that records each
message it starts and each ack answered `200`). A killed consumer's messages come back
when its stream closes and are redelivered. At the end every message must be acked
exactly once or dead-lettered after its last attempt, none left ready or leased, and no
message processed more often than it was delivered.
"""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

import anyio
import pytest

from backend.testing import cli
from backend.testing.checker import check_queue, read_ids, unfinished
from backend.testing.faults import Restartable, kill_all, spawn_module
from backend.testing.publishers import enqueue
from backend.testing.soak import scale

pytestmark = [pytest.mark.external, pytest.mark.anyio]

MESSAGES = scale(300, 6000)
KILLS = scale(5, 100)
KILL_EVERY = 0.4
MAX_ATTEMPTS = 10
QUEUE = "s4"
HTTP_WORKERS = 2
CLI_WORKERS = 1


@pytest.mark.timeout(scale(120, 900))
async def test_sigkilled_consumers_get_redeliveries_and_ack_each_message_once(
    database_url: str, tmp_path: Path
) -> None:
    server = Restartable(database_url, cli.FAST_QUEUES)
    rng = random.Random(4)
    slots = range(HTTP_WORKERS + CLI_WORKERS)
    workers: list[Worker] = []
    kills = 0
    try:
        enqueued = await enqueue(server.url, QUEUE, MESSAGES, max_attempts=MAX_ATTEMPTS)
        workers = [Worker(server.url, tmp_path, slot, 0) for slot in slots]
        with anyio.fail_after(scale(50, 800)):
            while kills < KILLS and await unfinished(database_url, QUEUE) > MESSAGES // 20:
                await anyio.sleep(KILL_EVERY)
                # Only a worker that is consuming holds messages when it dies.
                busy = [worker for worker in workers if worker.busy()]
                if busy:
                    victim = rng.choice(busy)
                    kill_all([victim.process])
                    kills += 1
                    workers[victim.slot] = Worker(server.url, tmp_path, victim.slot, kills)
            while await unfinished(database_url, QUEUE):
                await anyio.sleep(0.2)
    finally:
        kill_all([worker.process for worker in workers])
        server.close()
    rows = await check_queue(
        database_url,
        QUEUE,
        enqueued=enqueued,
        acks=logged(tmp_path, "acks-*"),
        processed=logged(tmp_path, "processed-*"),
        unlogged_acks=None,  # the CLI workers keep no ack log
    )
    redelivered = sum(1 for row in rows if row.attempt > 1)
    assert kills >= min(3, KILLS), f"only {kills} kills: the queue ran dry"
    assert redelivered >= kills // 2, f"{redelivered} redeliveries after {kills} kills"
    print(f"kills {kills}, redelivered {redelivered}, dead {sum(r.state == 'dead' for r in rows)}")


class Worker:
    """One consumer process; slots below HTTP_WORKERS run the HTTP worker, others the CLI."""

    def __init__(self, url: str, logs: Path, slot: int, generation: int) -> None:
        self.slot = slot
        self.processed = logs / f"processed-{slot}-{generation}"
        if slot < HTTP_WORKERS:
            acks = logs / f"acks-{slot}-{generation}"
            seed = 100 * generation + slot
            self.process = spawn_module(
                "backend.testing.http_worker", url, QUEUE, acks, self.processed, "0", str(seed)
            )
            return
        script = f'echo "$PGCAST_MESSAGE_ID" >> {self.processed}; sleep 0.02'
        self.process = subprocess.Popen(
            [*cli.PGCAST, "queue", "work", QUEUE, "--concurrency", "2", "--lease", "5",
             "--", "sh", "-c", script],
            env=cli.cli_env(url),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def busy(self) -> bool:
        """It has started at least one message, so it is connected and holds some."""
        return self.processed.exists() and self.processed.stat().st_size > 0


def logged(directory: Path, pattern: str) -> list[int]:
    return read_ids(directory.glob(pattern))
