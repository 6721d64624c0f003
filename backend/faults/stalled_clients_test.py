"""Scenario 5: many stalled SSE clients next to a few healthy ones.

Fault: raw sockets that request an SSE stream and never read (1,000 of them under
`make soak`, 200 in the short version). They use a tiny receive buffer and an 88-byte
segment size: Linux grows a server's send buffer with the segment size (up to tcp_wmem's
4 MB per socket), so with small segments the server's writes block after ~40 KB instead
of ~4 MB. A burst of events (100 of 16 KiB, then more of 1 KiB) then fills their socket,
writer and subscriber buffers, until the server reports that every one of them
overflowed (it cut them off from the live path, to catch up from the log once they read
again, which they never do).

Latency is compared within the same run, at the same time: two server processes on one
database, the stalled clients on `stalled`, none on `twin`, ten healthy SSE clients on
each, and publishers sending the same rate to both (so each hears half its events from
its own publishes and half by NOTIFY). A load spike from outside hits both alike. The
healthy clients' p99 latency (receive time minus the publish timestamp in the data) on
`stalled` must stay within 2x the p99 on `twin` plus 20 ms, so that a tiny baseline does
not make the check flaky. The `stalled` server's RSS may grow by at most 150 MB (or 384 KB
per stalled client, if more), and by at most 20 MB while events keep flowing after they
stalled: memory is bounded by the number of clients, not by the size or number of events.
Every healthy client must get every event exactly once.
"""

from __future__ import annotations

import socket
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from functools import partial

import anyio
import orjson
import pytest

from backend.testing.checker import Received, check_streams
from backend.testing.faults import Restartable, gauge, raise_open_files, rss, wait_until
from backend.testing.followers import Follower, follow_sse, wait_caught_up
from backend.testing.publishers import Publisher, all_acked, last_id
from backend.testing.soak import scale

pytestmark = [pytest.mark.external, pytest.mark.anyio]

STALLED = scale(200, 1000)
HEALTHY = 10
MEASURE_SECONDS = scale(3.0, 30.0)
INTERVAL = 0.02
PAD = 1024
BUFFER = scale(200, 1000)  # SUBSCRIBER_BUFFER: smaller in the short version, to fill faster
FILL = BUFFER + 500  # beyond the subscriber buffer plus the writer's and the sockets' buffers
BIG_EVENTS = 100
BIG_PAD = 16 * 1024
TOPIC = "s5"
ENV = {"SEND_TIMEOUT": "600", "HEARTBEAT_SECONDS": "15", "SUBSCRIBER_BUFFER": str(BUFFER)}
SSE_GAUGE = 'pgcast_connections{transport="sse"}'
OVERFLOWS = "pgcast_subscriber_overflows_total"
SUBSCRIPTIONS = "pgcast_subscriptions "
LAGGING = "pgcast_lagging_subscribers "
MB = 1024 * 1024
# Each stalled client costs memory (its connection, ~70 KB, and the output buffered for it,
# ~200 KB), but that must not grow with the size or number of events published after it
# stalled.
RSS_LIMIT = max(150 * MB, STALLED * 384 * 1024)
RSS_DRIFT = 20 * MB


@pytest.mark.timeout(scale(120, 300))
async def test_stalled_clients_do_not_slow_healthy_ones_or_grow_memory(
    database_url: str,
) -> None:
    raise_open_files(STALLED + 1024)
    servers: dict[str, Restartable] = {}

    def start(name: str) -> None:
        servers[name] = Restartable(database_url, ENV)

    stalled: list[socket.socket] = []
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(anyio.to_thread.run_sync, start, "stalled")
            tg.start_soon(anyio.to_thread.run_sync, start, "twin")
        healthy = {name: [Received(f"{name}-{i}") for i in range(HEALTHY)] for name in servers}
        latencies: dict[str, list[float]] = defaultdict(list)
        publishers: list[Publisher] = []

        def on_data(name: str) -> Callable[[str], None]:
            def record(raw: str) -> None:
                data = orjson.loads(raw)["data"]
                if data["label"].startswith("measure"):
                    latencies[name].append(time.time() - data["t"])

            return record

        async def publish(phase: str, seconds: float) -> None:
            stop = anyio.Event()
            async with anyio.create_task_group() as tg:
                for name, server in servers.items():
                    publisher = Publisher(f"{phase}_{name}", [server.url], TOPIC, pad=PAD)
                    publishers.append(publisher)
                    tg.start_soon(partial(publisher.run, stop, interval=INTERVAL))
                await anyio.sleep(seconds)
                stop.set()
            await wait_caught_up(everyone, last_id(publishers), within=60)

        everyone = [sub for subs in healthy.values() for sub in subs]
        async with anyio.create_task_group() as tg:
            for name, subs in healthy.items():
                url = servers[name].url
                for sub in subs:
                    tg.start_soon(follow_sse, Follower(sub, [url], TOPIC, on_data=on_data(name)))
                await wait_until(_connections(url, HEALTHY), f"healthy clients on {name}")
            await publish("warmup", 1.0)
            target = servers["stalled"]
            before = rss(target.pid)
            stalled = [_stalled_client(target.server.port) for _ in range(STALLED)]
            await wait_until(
                _connections(target.url, HEALTHY + STALLED), "stalled clients connected", within=60
            )
            # Large events first: a writer that batches frames for a blocked client must
            # not keep a private copy of many of them.
            big = Publisher("big", [target.url], TOPIC, pad=BIG_PAD)
            filler = Publisher("fill", [target.url], TOPIC, pad=PAD)
            publishers += [big, filler]
            await big.burst(BIG_EVENTS, batch=20)
            await filler.burst(FILL)
            await wait_until(_cut_off(target.url), "stalled clients cut off from the hub")
            await wait_caught_up(everyone, filler.last_id, within=60)
            filled = rss(target.pid)
            await publish("measure", MEASURE_SECONDS)
            after = rss(target.pid)
            connected = await gauge(target.url, SSE_GAUGE)
            tg.cancel_scope.cancel()
    finally:
        for sock in stalled:
            sock.close()
        for server in servers.values():
            server.close()
    await check_streams(
        database_url, [TOPIC], everyone, acked=all_acked(publishers), through=last_id(publishers)
    )
    p99 = {name: _p99(values) for name, values in latencies.items()}
    report = (
        f"p99 {p99['stalled'] * 1000:.1f} ms with {STALLED} stalled clients,"
        f" {p99['twin'] * 1000:.1f} ms without; RSS +{(filled - before) / MB:.1f} MB when"
        f" they were cut off, +{(after - before) / MB:.1f} MB after the measurement"
    )
    print(report)
    assert connected >= HEALTHY + STALLED, "stalled clients were dropped during the measurement"
    assert p99["stalled"] <= 2 * p99["twin"] + 0.020, report
    assert after - before < RSS_LIMIT, report
    assert after - filled < RSS_DRIFT, report


def _stalled_client(port: int) -> socket.socket:
    """An SSE request on a socket that will never be read."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 88)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    sock.sendall(
        f"GET /topics/{TOPIC}/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        "Accept: text/event-stream\r\n\r\n".encode()
    )
    return sock


def _connections(url: str, count: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await gauge(url, SSE_GAUGE) >= count

    return check


def _cut_off(url: str) -> Callable[[], Awaitable[bool]]:
    """Every stalled client overflowed; only the healthy ones are still on the live path."""

    async def check() -> bool:
        overflows = await gauge(url, OVERFLOWS)
        lagging = await gauge(url, LAGGING)
        live = await gauge(url, SUBSCRIPTIONS) - lagging
        return overflows >= STALLED and live <= HEALTHY

    return check


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
