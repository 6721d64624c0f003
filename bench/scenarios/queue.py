"""Scenario 5: queue throughput, jobs/s from enqueue to ack.

`queue_consumers` WebSocket consumers (`consume` with a prefetch, one process) ack every
message as soon as it arrives; the parent then enqueues the jobs over HTTP in arrays of
100, once for each count in `queue_jobs` (a short run, then a sustained one). Rate = jobs
/ (last ack answered - first enqueue). Baseline: the same number of asyncpg workers
running the classic loop (claim one row with FOR UPDATE SKIP LOCKED, delete it, commit)
while the parent inserts the same jobs in arrays of 100.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
import orjson

from bench.fleet import queue_consumers
from bench.loadgen import skip_locked_workers
from bench.model import Row, ScenarioResult
from bench.procs import Child, stop_all
from bench.scenarios.common import Context
from bench.wire import HttpConn

KEY = "queue"
TITLE = "Queue: jobs/s from enqueue to ack"
METHOD = (
    "WebSocket consumers (`consume`, lease 60 s) that ack each message on arrival, in one "
    "client process (the acks for the frames of one read go out in one write); the "
    "producer enqueues over HTTP in arrays of 100 (a raw keep-alive HTTP/1.1 client, orjson, "
    "one request at a time) once they are subscribed. Each job costs pgcast its share of a "
    "claim statement and of an ack commit (claims and settlements made together share "
    "them). Baseline: asyncpg "
    "workers, each looping over BEGIN; SELECT ... FOR UPDATE SKIP LOCKED LIMIT 1; DELETE; "
    "COMMIT (sleeping 2 ms on an empty claim), fed by INSERTs of 100 rows; its table is "
    "never analyzed, so the claim keeps its index scan."
)
CHUNK = 100


async def _enqueue(port: int, queue: str, jobs: int, padding: str) -> None:
    """One keep-alive connection, one request at a time, as the peers' producers insert
    one batch at a time; a raw client (`bench.wire`), so the producer's own CPU (about a
    tenth of httpx's per request) takes little from the server on this small machine."""
    conn = await asyncio.wait_for(HttpConn.open(port), 30)
    try:
        sent = 0
        while sent < jobs:
            size = min(CHUNK, jobs - sent)
            body = [{"data": {"n": sent + i, "pad": padding}} for i in range(size)]
            await asyncio.wait_for(
                conn.expect("POST", f"/queues/{queue}/messages", orjson.dumps(body), 201), 60
            )
            sent += size
    finally:
        conn.close()


def _pgcast(ctx: Context, prefetch: int, jobs: int) -> dict[str, Any]:
    sizes = ctx.sizes
    queue = f"bench.jobs-p{prefetch}"
    with ctx.stack.server() as server:
        consumer = Child(
            queue_consumers,
            f"queue-consumers-p{prefetch}",
            port=server.port,
            queue=queue,
            consumers=sizes.queue_consumers,
            prefetch=prefetch,
        )
        try:
            ready = consumer.expect("ready", timeout=60)
            consumer.send("expect", jobs=jobs, timeout=120)
            meter = ctx.meter(server.process.pid)
            meter.start()
            started = time.time()
            asyncio.run(_enqueue(server.port, queue, jobs, ctx.padding))
            report = consumer.expect("result", timeout=180)
            cpu = meter.stop()
        finally:
            consumer.stop()
    seconds = float(report["last_at"]) - started
    return {
        "consumers": ready["consumers"],
        "prefetch": prefetch,
        "acked": report["acked"],
        "seconds": round(seconds, 3),
        "jobs_per_s": round(int(report["acked"]) / seconds, 1) if seconds > 0 else None,
        **cpu,
    }


async def _insert_jobs(dsn: str, jobs: int, padding: str) -> None:
    conn = await asyncpg.connect(dsn, timeout=30)
    try:
        sent = 0
        while sent < jobs:
            size = min(CHUNK, jobs - sent)
            await conn.execute(
                "INSERT INTO bench.jobs (payload)"
                " SELECT json_build_object('n', n, 'pad', $2::text)"
                " FROM generate_series(1, $1::int) AS n",
                size,
                padding,
            )
            sent += size
    finally:
        await conn.close()


def _baseline(ctx: Context, jobs: int) -> dict[str, Any]:
    sizes = ctx.sizes
    workers = Child(
        skip_locked_workers, "skip-locked-workers", dsn=ctx.stack.url, workers=sizes.queue_consumers
    )
    try:
        workers.expect("ready", timeout=60)
        meter = ctx.meter(None)
        workers.send("go", jobs=jobs, timeout=120)
        meter.start()
        started = time.time()
        asyncio.run(_insert_jobs(ctx.stack.url, jobs, ctx.padding))
        report = workers.expect("result", timeout=180)
        cpu = meter.stop()
    finally:
        stop_all([workers])
    seconds = float(report["last_at"]) - started
    return {
        "workers": sizes.queue_consumers,
        "done": report["done"],
        "seconds": round(seconds, 3),
        "jobs_per_s": round(int(report["done"]) / seconds, 1) if seconds > 0 else None,
        **cpu,
    }


def run(ctx: Context) -> ScenarioResult:
    sizes = ctx.sizes
    result = ScenarioResult(KEY, TITLE, METHOD)
    details: dict[str, Any] = {}
    for jobs in sizes.queue_jobs:
        ours = {p: _pgcast(ctx, p, jobs) for p in sizes.queue_prefetch}
        base = _baseline(ctx, jobs)
        for prefetch, got in ours.items():
            note = "" if got["acked"] == jobs else f"acked {got['acked']}"
            result.rows.append(
                Row(
                    f"{got['consumers']} WS consumers, prefetch {prefetch}, {jobs} jobs",
                    "jobs/s",
                    got["jobs_per_s"],
                    base["jobs_per_s"],
                    f"SKIP LOCKED loop, {base['workers']} workers",
                    note=note or f"server {got['server_cpu_pct']:.0f}% CPU",
                )
            )
        details[str(jobs)] = {"pgcast": ours, "baseline": base}
    result.details = details
    return result
