"""`serve --workers 2`: one port, two worker processes, a parent that restarts and drains them."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import anyio
import httpx
import orjson
import psutil
import pytest
from httpx_sse import ServerSentEvent
from httpx_ws import AsyncWebSocketSession, WebSocketDisconnect, aconnect_ws

from backend.testing.clients import next_events, publish, sse
from backend.testing.server import ServerProcess, start_server

pytestmark = [pytest.mark.external, pytest.mark.anyio]

SSE = {"Accept": "text/event-stream"}
TWO_WORKERS = {"WORKERS": "2"}
MAX_STREAMS = 40  # all on one worker by chance: 2 x 2**-40


def workers_of(server: ServerProcess) -> set[int]:
    """The pids of the live worker processes (not multiprocessing's resource tracker, nor
    a killed worker the supervisor has not reaped yet)."""
    workers = set()
    for child in psutil.Process(server.process.pid).children():
        try:
            if "spawn_main" in " ".join(child.cmdline()):
                workers.add(child.pid)
        except (psutil.ZombieProcess, psutil.NoSuchProcess):
            continue
    return workers


async def metric(client: httpx.AsyncClient, url: str, name: str) -> float:
    text = (await client.get(f"{url}/metrics")).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


async def test_two_workers_share_a_port_survive_a_kill_and_drain_on_sigterm(
    database_url: str,
) -> None:
    """One server start (each costs seconds) for the three things a supervisor must do."""
    with start_server(database_url, extra_env=TWO_WORKERS) as server:
        assert len(workers_of(server)) == 2
        await every_event_in_order_and_summed_metrics(server)
        await a_killed_worker_is_replaced(server)
        await sigterm_drains_every_stream(server)


def streams_per_worker(server: ServerProcess) -> list[int]:
    """How many established connections on the server's port each worker holds."""
    return [
        sum(
            1
            for c in psutil.Process(pid).net_connections("tcp")
            if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == server.port
        )
        for pid in workers_of(server)
    ]


async def every_event_in_order_and_summed_metrics(server: ServerProcess) -> None:
    """Streams on both workers (opened until each worker holds one; the kernel spreads
    connections at random) each get all 20 events, and /metrics sums both workers."""
    async with AsyncExitStack() as stack:
        client = await stack.enter_async_context(httpx.AsyncClient(timeout=15))
        streams: list[AsyncIterator[ServerSentEvent]] = []
        while len(streams) < 6 or 0 in streams_per_worker(server):
            assert len(streams) < MAX_STREAMS, f"every stream went to one worker: {streams}"
            streams.append(
                await stack.enter_async_context(
                    sse(httpx.AsyncClient(timeout=15), f"{server.url}/topics/w/events", SSE)
                )
            )
        ids = []
        for i in range(20):
            async with httpx.AsyncClient(timeout=15) as fresh:  # a new connection each
                ids += [e["id"] for e in await publish(fresh, server.url, "w", i)]
        with anyio.fail_after(15):
            for stream in streams:
                assert [m.id for m in await next_events(stream, 20)] == ids
        assert ids == sorted(ids)
        assert await metric(client, server.url, "pgcast_events_published_total") == 20
        opened = len(streams)
        assert await metric(client, server.url, 'pgcast_connections{transport="sse"}') == opened
        with anyio.fail_after(10):  # each worker copies its hub's counters once a second
            while await metric(client, server.url, "pgcast_hub_deliveries_total") < opened * 20:
                await anyio.sleep(0.2)
        assert await metric(client, server.url, "pgcast_hub_deliveries_total") == opened * 20


async def a_killed_worker_is_replaced(server: ServerProcess) -> None:
    victim = min(workers_of(server))
    psutil.Process(victim).kill()
    with anyio.fail_after(20):
        while len(workers_of(server) - {victim}) < 2:
            await anyio.sleep(0.2)
    assert f"worker {victim} exited with status -9; starting a new one" in server.log()


async def sigterm_drains_every_stream(server: ServerProcess) -> None:
    replaced = workers_of(server)
    async with (
        httpx.AsyncClient(base_url=server.url, timeout=15) as client,
        aconnect_ws(
            server.url.replace("http", "ws", 1) + "/ws",
            client,
            subprotocols=["pgcast.v1"],
            session_class=AsyncWebSocketSession,
        ) as ws,
    ):
        with anyio.fail_after(20):  # the new worker may still be starting
            while (await client.get("/readyz")).status_code != 200:
                await anyio.sleep(0.2)
        await ws.send_text(orjson.dumps({"op": "subscribe", "id": 1, "topic": "bye"}).decode())
        assert orjson.loads(await ws.receive_text()) == {"op": "subscribed", "id": 1}
        async with client.stream("GET", "/topics/bye/events", headers=SSE) as response:
            lines = response.aiter_lines()
            assert (await anext(lines)).startswith("retry:")
            server.process.send_signal(signal.SIGTERM)
            with anyio.fail_after(15):
                rest = [line async for line in lines]
                with pytest.raises(WebSocketDisconnect) as closed:
                    await ws.receive_text()
        assert any("shutting down" in line for line in rest)
        assert closed.value.code == 1001
    assert server.process.wait(15) == 0
    assert not any(psutil.pid_exists(pid) for pid in replaced)
