"""Scenario 1: the LISTEN connection is terminated again and again while events flow.

Fault: `pg_terminate_backend` on the server's `pgcast-listener` backend every few hundred
milliseconds. Events come from an HTTP publisher and from SQL (`pgcast.publish` in the
test's own transactions, which only the server's sequencer can position: it hears about
them through the LISTEN connection under test, or after a reconnect). The fallback poll is
set to 30 s so that it cannot hide a lost wake-up. SSE and WebSocket followers must get
every event exactly once, in log order.
"""

from __future__ import annotations

import time
from functools import partial

import anyio
import pytest

from backend.connectors.database import connect
from backend.testing.checker import Received, check_streams
from backend.testing.faults import Restartable, gauge, kill_listener, listener_count, wait_until
from backend.testing.followers import Follower, follow_sse, follow_ws, wait_caught_up
from backend.testing.publishers import Publisher, all_acked
from backend.testing.soak import scale

pytestmark = [pytest.mark.external, pytest.mark.anyio]

KILLS = scale(5, 30)
KILL_EVERY = 0.3
SQL_EVENTS_PER_ROUND = scale(10, 20)
TOPICS = ["s1.http", "s1.sql"]


@pytest.mark.timeout(scale(120, 600))
async def test_listen_connection_killed_repeatedly_loses_and_repeats_nothing(
    database_url: str,
) -> None:
    server = Restartable(database_url, {"POLL_INTERVAL_SECONDS": "30"})
    subscribers = [Received("sse"), Received("ws")]
    http = Publisher("http", [server.url], "s1.http")
    sql_labels: list[str] = []
    kills = 0
    outages: list[float] = []
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(follow_sse, Follower(subscribers[0], [server.url], "s1.>"))
            tg.start_soon(follow_ws, Follower(subscribers[1], [server.url], "s1.>"))
            stop = anyio.Event()
            tg.start_soon(partial(http.run, stop, interval=0.05))
            sql = await connect(database_url)
            try:
                for round_ in range(KILLS):
                    await wait_until(
                        lambda: _has_listener(database_url), "the listener is back", within=30
                    )
                    killed_at = time.monotonic()
                    kills += await kill_listener(database_url)
                    # While it is down (and after), publish from outside the server.
                    for i in range(SQL_EVENTS_PER_ROUND):
                        label = f"sql-{round_}-{i}"
                        await sql.execute(
                            "SELECT pgcast.publish('s1.sql', $1::jsonb)", {"label": label}
                        )
                        sql_labels.append(label)
                    await anyio.sleep(KILL_EVERY)
                    await wait_until(
                        lambda: _has_listener(database_url), "the listener is back", within=30
                    )
                    outages.append(time.monotonic() - killed_at)
            finally:
                await sql.close()
            stop.set()
            await anyio.sleep(0.2)
            reconnects = await gauge(server.url, "pgcast_listener_reconnects_total")
            log = await check_streams(database_url, TOPICS, [], acked=all_acked([http]))
            await wait_caught_up(subscribers, log[-1].id, within=40)
            tg.cancel_scope.cancel()
    finally:
        server.close()
    await check_streams(database_url, TOPICS, subscribers, through=log[-1].id)
    assert kills == KILLS
    assert reconnects >= KILLS
    assert len([e for e in log if e.topic == "s1.sql"]) == len(sql_labels)
    print(f"listener outages (s): {[round(o, 2) for o in outages]}")


async def _has_listener(database_url: str) -> bool:
    return await listener_count(database_url) > 0
