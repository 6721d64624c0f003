"""pgqueuer as a pgcast peer for queues: one QueueManager with its defaults.

Runs in the peers virtualenv (`.tools/peers/`), never imported by `bench`. Two roles:
`work` installs pgqueuer's schema into its (fresh, own) database, starts one
`QueueManager` (defaults: batch 10, no concurrency limit; its jobs run as tasks on one
event loop) whose entrypoint does no work, and reports when `jobs` jobs have run;
`enqueue` inserts the jobs in batches of 100 (as pgcast's producer posts arrays of 100).

Guarantees: durable (jobs are rows, committed before `enqueue` returns); a job whose
worker dies is picked again after the heartbeat timeout; no ordering promise across
concurrent jobs. Done jobs are deleted (a log row is kept).

Talks to the bench as JSON lines on stdout: {"ready"}, then {"done", "last_at"} (work) or
{"first_at", "enqueued"} (enqueue).
Usage: python pgqueuer_worker.py work|enqueue DATABASE_URL JOBS
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import asyncpg
from pgqueuer import AsyncpgDriver, Job, Queries, QueueManager

ENTRYPOINT = "bench"
CHUNK = 100


def say(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


async def work(database_url: str, jobs: int) -> None:
    conn = await asyncpg.connect(database_url)
    queries = Queries(AsyncpgDriver(conn))
    await queries.install()
    manager = QueueManager(queries)
    state = {"done": 0, "last_at": 0.0}

    @manager.entrypoint(ENTRYPOINT)
    async def run_job(_job: Job) -> None:
        state["done"] += 1
        if state["done"] >= jobs:
            state["last_at"] = time.time()
            manager.shutdown.set()

    say(ready=True)
    await manager.run()
    say(done=state["done"], last_at=state["last_at"])
    await conn.close()


async def enqueue(database_url: str, jobs: int) -> None:
    conn = await asyncpg.connect(database_url)
    queries = Queries(AsyncpgDriver(conn))
    say(ready=True)
    first_at = time.time()
    sent = 0
    while sent < jobs:
        size = min(CHUNK, jobs - sent)
        payloads = [json.dumps({"n": sent + i}).encode() for i in range(size)]
        await queries.enqueue([ENTRYPOINT] * size, payloads, [0] * size)
        sent += size
    say(first_at=first_at, enqueued=sent)
    await conn.close()


def main() -> None:
    role, database_url, jobs = sys.argv[1], sys.argv[2], int(sys.argv[3])
    asyncio.run((work if role == "work" else enqueue)(database_url, jobs))


if __name__ == "__main__":
    main()
