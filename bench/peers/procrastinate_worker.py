"""procrastinate as a pgcast peer for queues: one worker with concurrency 8.

Runs in the peers virtualenv (`.tools/peers/`), never imported by `bench`. Two roles:
`work` applies procrastinate's schema to its (fresh, own) database, runs
`run_worker_async(concurrency=8)` on one queue with a task that does no work, and
reports when `jobs` jobs have run; `enqueue` defers the jobs in batches of 100
(`batch_defer_async`, as pgcast's producer posts arrays of 100).

Guarantees: durable (jobs are rows); a job whose worker dies stays `doing` until it is
retried or cleaned up (stalled-job recovery is explicit); no ordering promise across
concurrent jobs. Finished job rows are kept (status `succeeded`).

Talks to the bench as JSON lines on stdout, as `pgqueuer_worker.py` does.
Usage: python procrastinate_worker.py work|enqueue DATABASE_URL JOBS
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time

from procrastinate import App, PsycopgConnector

QUEUE = "bench"
CHUNK = 100
CONCURRENCY = 8


def say(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


async def work(app: App, jobs: int) -> None:
    state = {"done": 0}
    finished = asyncio.Event()

    @app.task(name="bench_job", queue=QUEUE)
    async def bench_job(n: int) -> None:
        state["done"] += 1
        if state["done"] >= jobs:
            finished.set()

    await app.schema_manager.apply_schema_async()
    worker = asyncio.create_task(app.run_worker_async(queues=[QUEUE], concurrency=CONCURRENCY))
    say(ready=True)
    await finished.wait()
    say(done=state["done"], last_at=time.time())
    worker.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await worker


async def enqueue(app: App, jobs: int) -> None:
    @app.task(name="bench_job", queue=QUEUE)
    async def bench_job(n: int) -> None:
        del n

    say(ready=True)
    first_at = time.time()
    sent = 0
    while sent < jobs:
        size = min(CHUNK, jobs - sent)
        await bench_job.batch_defer_async(*({"n": sent + i} for i in range(size)))
        sent += size
    say(first_at=first_at, enqueued=sent)


async def run(role: str, database_url: str, jobs: int) -> None:
    app = App(connector=PsycopgConnector(conninfo=database_url))
    async with app.open_async():
        await (work if role == "work" else enqueue)(app, jobs)


def main() -> None:
    asyncio.run(run(sys.argv[1], sys.argv[2], int(sys.argv[3])))


if __name__ == "__main__":
    main()
