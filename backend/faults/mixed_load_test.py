"""Scenario 7: mixed load for a while; nothing lost, nothing twice, memory flat.

Load: three publishers on three topics, SSE and WebSocket followers of which most
disconnect after a random number of events and resume, one follower of a single topic, a
queue producer and two queue consumer processes (`backend.testing.http_worker`, nacking
5 % of the messages). The short version runs 5 s in `make test` (longer on a machine too
slow for the followers to drop and resume 4 times by then); under `make soak` it runs
`PGCAST_SOAK_SECONDS` (600 by default) and the server's RSS, sampled every second,
must grow by less than 10 % between the end of the warm-up (the first sixth of the run,
at least 30 s) and the end. The checker then verifies every stream and the queue.
"""

from __future__ import annotations

import statistics
import time
from functools import partial
from pathlib import Path

import anyio
import httpx
import pytest

from backend.testing.checker import Received, check_queue, check_streams, read_ids, unfinished
from backend.testing.faults import Restartable, kill_all, rss, spawn_module
from backend.testing.followers import Follower, follow_sse, follow_ws, wait_caught_up
from backend.testing.publishers import Publisher, all_acked, last_id, post_retrying
from backend.testing.soak import SOAK, SOAK_SECONDS, scale

pytestmark = [pytest.mark.external, pytest.mark.anyio]

DURATION = scale(5.0, SOAK_SECONDS)
WARMUP = max(30.0, DURATION / 6)
TOPICS = ["s7.a", "s7.b", "s7.c"]
QUEUE = "s7"
CONSUMERS = 2
RSS_GROWTH = 0.10
RESUMES = 4
"""The dropping followers resume at least this often in all, so resuming is exercised:
on a slow machine fewer events in `DURATION` mean fewer drops, and the run goes on."""
LONGER = 45.0
"""How much longer than `DURATION` the run may go on for those resumes."""


@pytest.mark.timeout(scale(120 + LONGER, SOAK_SECONDS + 300))
async def test_mixed_load_loses_and_repeats_nothing(database_url: str, tmp_path: Path) -> None:
    server = Restartable(database_url, {"QUEUE_REAP_INTERVAL_SECONDS": "0.2"})
    url = server.url
    publishers = [
        Publisher("a", [url], "s7.a"),
        Publisher("b", [url], "s7.b", pad=500),
        Publisher("c", [url], "s7.c"),
    ]
    followers = [
        Follower(Received("sse-steady"), [url], "s7.>"),
        Follower(Received("ws-steady"), [url], "s7.>"),
        *[
            Follower(Received(f"sse-drop-{i}"), [url], "s7.>", drop=(5, 300), seed=i)
            for i in (1, 2)
        ],
        *[Follower(Received(f"ws-drop-{i}"), [url], "s7.>", drop=(5, 300), seed=i) for i in (3, 4)],
    ]
    only_a = Follower(Received("sse-a-only"), [url], "s7.a", drop=(5, 100), seed=5)
    enqueued: list[int] = []
    samples: list[tuple[float, int]] = []
    acks = [tmp_path / f"acks-{i}" for i in range(CONSUMERS)]
    processed = [tmp_path / f"processed-{i}" for i in range(CONSUMERS)]
    consumers = [
        spawn_module(
            "backend.testing.http_worker", url, QUEUE, acks[i], processed[i], "0.05", str(i)
        )
        for i in range(CONSUMERS)
    ]
    started = time.monotonic()
    try:
        async with anyio.create_task_group() as tg:
            for follower in [*followers, only_a]:
                kind = follow_ws if follower.received.name.startswith("ws") else follow_sse
                tg.start_soon(kind, follower)
            stop = anyio.Event()
            for interval, publisher in zip((0.02, 0.05, 0.03), publishers, strict=True):
                tg.start_soon(partial(publisher.run, stop, interval=interval))
            tg.start_soon(_produce, url, enqueued, stop)
            while (elapsed := time.monotonic() - started) < DURATION or (
                _resumes(followers) < RESUMES and elapsed < DURATION + LONGER
            ):
                await anyio.sleep(1)
                samples.append((time.monotonic() - started, rss(server.pid)))
            ran = time.monotonic() - started
            stop.set()
            await anyio.sleep(0.5)
            everyone = [f.received for f in [*followers, only_a]]
            await wait_caught_up(everyone[:-1], last_id(publishers), within=60)
            await wait_caught_up([only_a.received], publishers[0].last_id, within=60)
            with anyio.fail_after(60):
                while await unfinished(database_url, QUEUE):
                    await anyio.sleep(0.2)
            await anyio.sleep(0.5)  # the consumers write their last ack lines
            tg.cancel_scope.cancel()
    finally:
        kill_all(consumers)
        server.close()
    await check_streams(
        database_url,
        TOPICS,
        [f.received for f in followers],
        acked=all_acked(publishers),
        expected=[label for p in publishers for label in p.labels],
        through=last_id(publishers),
    )
    await check_streams(database_url, ["s7.a"], [only_a.received], through=publishers[0].last_id)
    rows = await check_queue(
        database_url,
        QUEUE,
        enqueued=enqueued,
        acks=read_ids(acks),
        processed=read_ids(processed),
        unlogged_acks=CONSUMERS,
    )
    growth = _rss_growth(samples)
    events = sum(len(p.acked) for p in publishers)
    reconnects = _resumes(followers)
    print(
        f"{ran:.0f} s: {events} events, {len(rows)} messages, {reconnects} resumes;"
        f" RSS {samples[0][1] >> 20} -> {samples[-1][1] >> 20} MB, growth after warm-up"
        f" {growth:.1%}"
    )
    assert reconnects >= RESUMES, "the followers never resumed"
    if SOAK:
        assert growth < RSS_GROWTH, f"RSS grew by {growth:.1%} after the warm-up"


def _resumes(followers: list[Follower]) -> int:
    return sum(f.received.reconnects for f in followers)


async def _produce(url: str, enqueued: list[int], stop: anyio.Event) -> None:
    """Enqueue ten messages every 0.1 s, each batch with its own Idempotency-Key."""
    async with httpx.AsyncClient(timeout=30) as client:
        for batch in range(1_000_000):
            if stop.is_set():
                return
            items = [{"data": {"batch": batch, "n": n}} for n in range(10)]
            key = f"{QUEUE}-{batch}"
            answer = await post_retrying(client, f"{url}/queues/{QUEUE}/messages", items, key)
            enqueued.extend(int(m["id"]) for m in answer["messages"])
            await anyio.sleep(0.1)


def _rss_growth(samples: list[tuple[float, int]]) -> float:
    """Median RSS of the last 30 s over the median of the 30 s after the warm-up, minus 1."""
    after = [value for at, value in samples if WARMUP <= at < WARMUP + 30]
    last = [value for at, value in samples if at >= samples[-1][0] - 30]
    if not after or not last:
        return 0.0
    return statistics.median(last) / statistics.median(after) - 1
