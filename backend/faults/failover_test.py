"""Scenario 6: two server processes on one database; one is SIGKILLed under load.

Fault: SIGKILL of server `a` while both serve subscribers and publishers. Subscribers on
the survivor `b` must not notice: no disconnect, no gap, no duplicate, and no pause in
their deliveries longer than a generous bound while a publisher keeps publishing to `b`.
Subscribers and publishers of `a` move to `b` (their next URL) when their connection
fails: subscribers resume after their last id, publishers retry with the same
`Idempotency-Key`. At the end every subscriber has every event exactly once, in log order,
and every publish is in the log once.
"""

from __future__ import annotations

import time
from functools import partial

import anyio
import pytest

from backend.testing.checker import Received, check_streams
from backend.testing.faults import Restartable
from backend.testing.followers import Follower, follow_sse, follow_ws, wait_caught_up
from backend.testing.publishers import Publisher, all_acked, last_id
from backend.testing.soak import scale

pytestmark = [pytest.mark.external, pytest.mark.anyio]

BEFORE_KILL = scale(1.5, 20.0)
AFTER_KILL = scale(1.5, 40.0)
MAX_PAUSE = 2.0  # seconds without a delivery on the survivor while it gets ~50 events/s
TOPICS = ["s6.a", "s6.b"]


@pytest.mark.timeout(scale(120, 300))
async def test_survivor_is_unaffected_and_the_killed_servers_clients_resume_on_it(
    database_url: str,
) -> None:
    servers: dict[str, Restartable] = {}

    def start(name: str) -> None:
        servers[name] = Restartable(database_url)

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(anyio.to_thread.run_sync, start, "a")
            tg.start_soon(anyio.to_thread.run_sync, start, "b")
        a, b = servers["a"].url, servers["b"].url
        on_a = [Follower(Received(f"{kind}@a"), [a, b], "s6.>") for kind in ("sse", "ws")]
        on_b = [Follower(Received(f"{kind}@b"), [b], "s6.>") for kind in ("sse", "ws")]
        publishers = [Publisher("to_a", [a, b], "s6.a"), Publisher("to_b", [b], "s6.b")]
        subscribers = [f.received for f in on_a + on_b]
        async with anyio.create_task_group() as tg:
            for sse, ws in (on_a, on_b):
                tg.start_soon(follow_sse, sse)
                tg.start_soon(follow_ws, ws)
            stop = anyio.Event()
            for publisher in publishers:
                tg.start_soon(partial(publisher.run, stop, interval=0.02))
            await anyio.sleep(BEFORE_KILL)
            killed_at = time.monotonic()
            servers["a"].kill()
            await anyio.sleep(AFTER_KILL)
            stop.set()
            await anyio.sleep(0.2)
            await wait_caught_up(subscribers, last_id(publishers), within=30)
            tg.cancel_scope.cancel()
    finally:
        for server in servers.values():
            server.close()
    await check_streams(
        database_url,
        TOPICS,
        subscribers,
        acked=all_acked(publishers),
        expected=[label for p in publishers for label in p.labels],
        through=last_id(publishers),
    )
    pauses = [f.received.max_gap(since=killed_at - 1) for f in on_b]
    print(f"longest pause on the survivor around the kill: {max(pauses):.3f} s")
    for follower in on_b:
        name = follower.received.name
        assert follower.failures == 0, f"{name} was disconnected {follower.failures} times"
        pause = follower.received.max_gap(since=killed_at - 1)
        assert pause < MAX_PAUSE, f"{name} got nothing for {pause:.2f} s around the kill"
    for follower in on_a:
        assert follower.failures >= 1, f"{follower.received.name} never lost its server"
    assert publishers[0].errors >= 1, "the publisher to a never lost its server"
