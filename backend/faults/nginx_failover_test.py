"""Scenario 8: two pgcast processes behind nginx (deploy/nginx/pgcast.conf); one is SIGKILLed.

Subscribers know only the proxy's address, as browsers behind a load balancer do: SSE
followers resume with `Last-Event-ID` like a native EventSource, WebSocket followers with
`after`. The backend that holds the most of their connections is killed mid-stream; each
follower on it reconnects through nginx, lands on the survivor and resumes. A publisher
keeps publishing to the survivor throughout. At the end every follower has every event
exactly once, in log order, and all of them are connected to the survivor.
"""

from __future__ import annotations

from functools import partial

import anyio
import httpx
import pytest

from backend.testing.checker import Received, check_streams
from backend.testing.faults import Restartable
from backend.testing.followers import Follower, follow_sse, follow_ws, wait_caught_up
from backend.testing.proxy import nginx_in_front
from backend.testing.publishers import Publisher, all_acked, last_id
from backend.testing.soak import scale

pytestmark = [pytest.mark.external, pytest.mark.anyio]

BEFORE_KILL = scale(1.0, 10.0)
AFTER_KILL = scale(1.5, 20.0)
TOPICS = ["s8.a"]


async def streams_on(url: str) -> float:
    async with httpx.AsyncClient(timeout=5) as client:
        text = (await client.get(f"{url}/metrics")).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("pgcast_connections{")
    )


@pytest.mark.timeout(scale(120, 300))
async def test_clients_behind_nginx_resume_on_the_other_backend_exactly_once(
    database_url: str,
) -> None:
    backends = [Restartable(database_url), Restartable(database_url)]
    subscribers = [Received(f"{kind}-{n}") for kind in ("sse", "ws") for n in range(2)]
    followers = [Follower(received, [], "s8.>", idle=3.0) for received in subscribers]
    try:
        with nginx_in_front([b.url.removeprefix("http://") for b in backends]) as proxy:
            async with anyio.create_task_group() as tg:
                for follower in followers:
                    follower.urls = [proxy]
                    sse = follower.received.name.startswith("sse")
                    tg.start_soon(follow_sse if sse else follow_ws, follower)
                with anyio.fail_after(20):
                    while sum([await streams_on(b.url) for b in backends]) < len(subscribers):
                        await anyio.sleep(0.1)
                loads = [await streams_on(b.url) for b in backends]
                victim, survivor = (0, 1) if loads[0] >= loads[1] else (1, 0)
                publisher = Publisher("p", [backends[survivor].url], "s8.a")
                stop = anyio.Event()
                tg.start_soon(partial(publisher.run, stop, interval=0.02))
                await anyio.sleep(BEFORE_KILL)
                backends[victim].kill()
                await anyio.sleep(AFTER_KILL)
                stop.set()
                await wait_caught_up(subscribers, last_id([publisher]), within=30)
                assert await streams_on(backends[survivor].url) == len(subscribers)
                tg.cancel_scope.cancel()
    finally:
        for backend in backends:
            backend.close()
    await check_streams(
        database_url,
        TOPICS,
        subscribers,
        acked=all_acked([publisher]),
        expected=publisher.labels,
        through=last_id([publisher]),
    )
    assert min(loads) >= 1, f"nginx sent every follower to one backend: {loads}"
    assert sum(f.failures for f in followers) >= loads[victim], "nobody was cut off by the kill"
