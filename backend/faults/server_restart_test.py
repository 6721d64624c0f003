"""Scenario 2: the server is SIGKILLed and started again on the same port, under load.

Fault: SIGKILL of the only `pgcast serve` process, then a new process on the same port and
database. Two HTTP publishers send every event with an `Idempotency-Key` and retry it on
connection errors and `503` until they get a `201`, so an event whose answer was lost
with the process is stored once, not twice. SSE and WebSocket followers (resuming by
`Last-Event-ID` / `after`) and a `pgcast tail` process (which resumes by itself) must each
get every event exactly once, in log order, and every publish must be in the log once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial

import anyio
import pytest

from backend.testing.checker import Received, check_streams
from backend.testing.faults import Restartable, wait_until
from backend.testing.followers import CliTail, Follower, follow_sse, follow_ws, wait_caught_up
from backend.testing.publishers import Publisher, all_acked, last_id
from backend.testing.soak import scale

pytestmark = [pytest.mark.external, pytest.mark.anyio]

RESTARTS = scale(1, 15)
RUN_BETWEEN = scale(0.7, 3.0)
TOPICS = ["s2.a", "s2.b"]


@pytest.mark.timeout(scale(120, 600))
async def test_sigkilled_server_restarts_and_every_subscriber_resumes_exactly_once(
    database_url: str,
) -> None:
    server = Restartable(database_url)
    subscribers = [Received("sse"), Received("ws"), Received("cli")]
    publishers = [
        Publisher("a", [server.url], "s2.a"),
        Publisher("b", [server.url], "s2.b", pad=200),
    ]
    tail = CliTail(subscribers[2], server.url, "s2.>")
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(follow_sse, Follower(subscribers[0], [server.url], "s2.>"))
            tg.start_soon(follow_ws, Follower(subscribers[1], [server.url], "s2.>"))
            stop = anyio.Event()
            for publisher in publishers:
                tg.start_soon(partial(publisher.run, stop, interval=0.02))
            # The tail gives up if its first connection fails: let everyone connect first.
            await wait_until(_published(publishers), "a first publish", within=10)
            await wait_caught_up(subscribers, last_id(publishers), within=20)
            for _ in range(RESTARTS):
                await anyio.sleep(RUN_BETWEEN)
                server.kill()
                await anyio.sleep(0.2)
                await anyio.to_thread.run_sync(server.restart)
            await anyio.sleep(RUN_BETWEEN)
            stop.set()
            await anyio.sleep(0.2)
            await wait_caught_up(subscribers, last_id(publishers), within=30)
            tg.cancel_scope.cancel()
    finally:
        tail.stop()
        print("tail stderr:", tail.stderr)
        server.close()
    labels = [label for p in publishers for label in p.labels]
    await check_streams(
        database_url,
        TOPICS,
        subscribers,
        acked=all_acked(publishers),
        expected=labels,
        through=last_id(publishers),
    )
    assert server.kills == RESTARTS
    assert sum(p.errors for p in publishers) >= 1, "no publish saw the server die"
    assert tail.stderr.count("pgcast: reconnected") >= 1, tail.stderr


def _published(publishers: list[Publisher]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return bool(last_id(publishers))

    return check
