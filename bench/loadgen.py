"""Load-generator processes: HTTP publishers, SQL publishers and SKIP LOCKED workers.

Each function is a child entry (see `bench.procs`): it opens its connections, reports
`ready`, starts at the parent's `go` time and runs closed-loop (or paced at `rate`) until
`seconds` have passed or `max_events` were sent, then reports counts and its own CPU time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson

from bench.model import latency_summary
from bench.procs import Control
from bench.wire import HttpConn, HttpError

PGCAST_PUBLISH_SQL = "SELECT pgcast.publish($1, $2::jsonb)"
RAW_PUBLISH_SQL = (
    "WITH e AS (INSERT INTO bench.raw_events (topic, data) VALUES ($1, $2::jsonb) RETURNING id)"
    " SELECT pg_notify($3, $4) FROM e"
)
CLAIM_SQL = "SELECT id, payload FROM bench.jobs ORDER BY id FOR UPDATE SKIP LOCKED LIMIT 1"
DONE_SQL = "DELETE FROM bench.jobs WHERE id = $1"
RAW_CHANNEL = "bench_events"


def event_data(padding: str) -> dict[str, Any]:
    """An event payload carrying its send time."""
    return {"ts": time.time(), "pad": padding}


async def sleep_until(at: float) -> None:
    delay = at - time.time()
    if delay > 0:
        await asyncio.sleep(delay)


@dataclass
class Counts:
    """What the workers of one process did."""

    events: int = 0
    requests: int = 0
    errors: int = 0
    last_error: str = ""

    def failed(self, exc: BaseException) -> None:
        self.errors += 1
        self.last_error = f"{type(exc).__name__}: {exc}"[:300]


class Pacer:
    """Open-loop send slots at a fixed rate from `start` (late slots are sent at once)."""

    def __init__(self, rate: float, start: float) -> None:
        self.rate = rate
        self.start = start
        self.issued = 0

    def next(self) -> float:
        slot = self.start + self.issued / self.rate
        self.issued += 1
        return slot


async def _run(
    ctl: Control,
    workers: int,
    send: Callable[[int], Awaitable[None]],
    *,
    per_send: int,
    seconds: float,
    rate: float | None,
    max_events: int,
) -> None:
    """Shared driver: `send(worker_index)` does one request; counts and reports, with the
    round trips of the requests that succeeded (p50/p99 ms)."""
    ctl.send("ready", workers=workers)
    go = await ctl.expect("go", within=600)
    start = float(go["at"])
    deadline = start + seconds
    await sleep_until(start)
    cpu = time.process_time()
    counts = Counts()
    pacer = Pacer(rate, start) if rate else None
    round_trips: list[float] = []

    async def worker(index: int) -> None:
        while counts.events < max_events:
            if time.time() >= deadline:
                return  # a paced load that fell behind drops the slots it missed
            if pacer is not None:
                slot = pacer.next()
                if slot >= deadline:
                    return
                await sleep_until(slot)
            sent_at = time.perf_counter()
            try:
                await send(index)
            except HttpError as exc:
                counts.failed(exc)
                continue
            except (OSError, asyncio.IncompleteReadError, asyncpg.PostgresError) as exc:
                counts.failed(exc)
                return
            round_trips.append(time.perf_counter() - sent_at)
            counts.events += per_send
            counts.requests += 1

    await asyncio.gather(*(worker(i) for i in range(workers)))
    round_trips.sort()
    ctl.send(
        "result",
        round_trip=latency_summary(round_trips),
        events=counts.events,
        requests=counts.requests,
        errors=counts.errors,
        last_error=counts.last_error,
        elapsed=time.time() - start,
        cpu=time.process_time() - cpu,
    )


async def http_publishers(
    ctl: Control,
    port: int,
    topic: str,
    connections: int,
    batch: int,
    seconds: float,
    rate: float | None = None,
    max_events: int = 10_000_000,
    padding: str = "",
    ok: tuple[int, ...] = (201,),
) -> None:
    """POST single events (`batch` = 0) or arrays of `batch` events over keep-alive
    connections, one request in flight per connection; `ok` are the statuses that mean
    accepted (peers answer 202 as well)."""
    conns = [await HttpConn.open(port) for _ in range(connections)]
    path = f"/topics/{topic}/events"

    async def send(index: int) -> None:
        if batch:
            data = event_data(padding)
            body = orjson.dumps([{"data": data}] * batch)
        else:
            body = orjson.dumps({"data": event_data(padding)})
        await conns[index].expect("POST", path, body, ok)

    try:
        await _run(
            ctl,
            len(conns),
            send,
            per_send=max(batch, 1),
            seconds=seconds,
            rate=rate,
            max_events=max_events,
        )
    finally:
        for conn in conns:
            conn.close()


async def sql_publishers(
    ctl: Control,
    dsn: str,
    mode: str,
    topic: str,
    connections: int,
    seconds: float,
    rate: float | None = None,
    max_events: int = 10_000_000,
    padding: str = "",
) -> None:
    """One transaction per event: `pgcast.publish` (mode "pgcast"), or the baseline
    (mode "raw"): INSERT into a plain table and NOTIFY in the same statement."""
    conns = [await asyncpg.connect(dsn, timeout=30) for _ in range(connections)]

    async def send(index: int) -> None:
        data = orjson.dumps(event_data(padding)).decode()
        if mode == "pgcast":
            await conns[index].fetchval(PGCAST_PUBLISH_SQL, topic, data)
        else:
            await conns[index].fetchval(RAW_PUBLISH_SQL, topic, data, RAW_CHANNEL, data)

    try:
        await _run(
            ctl,
            len(conns),
            send,
            per_send=1,
            seconds=seconds,
            rate=rate,
            max_events=max_events,
        )
        await ctl.linger()
    finally:
        await asyncio.gather(*(conn.close(timeout=5) for conn in conns), return_exceptions=True)


async def skip_locked_workers(ctl: Control, dsn: str, workers: int) -> None:
    """The queue baseline: each worker claims one job with FOR UPDATE SKIP LOCKED and
    deletes it in the same transaction; an empty claim sleeps 2 ms."""
    conns = [await asyncpg.connect(dsn, timeout=30) for _ in range(workers)]
    ctl.send("ready", workers=len(conns))
    order = await ctl.expect("go", within=600)
    target = int(order["jobs"])
    deadline = time.time() + float(order["timeout"])
    cpu = time.process_time()
    state = {"done": 0, "last_at": 0.0}

    async def worker(conn: asyncpg.Connection[asyncpg.Record]) -> None:
        while state["done"] < target and time.time() < deadline:
            async with conn.transaction():
                row = await conn.fetchrow(CLAIM_SQL)
                if row is not None:
                    await conn.execute(DONE_SQL, row["id"])
            if row is None:
                await asyncio.sleep(0.002)
                continue
            state["done"] += 1
            state["last_at"] = time.time()

    await asyncio.gather(*(worker(conn) for conn in conns))
    ctl.send("result", done=state["done"], last_at=state["last_at"], cpu=time.process_time() - cpu)
    await ctl.linger()
    await asyncio.gather(*(conn.close(timeout=5) for conn in conns), return_exceptions=True)
