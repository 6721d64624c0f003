"""The lean subscription stream against a real server: heartbeats from the shared sweep,
live events written by the hub straight into idle streams, and a slot freed at once when
a client has left and another one needs it."""

from __future__ import annotations

import re
import time

import anyio
import httpx
import pytest

from backend.testing.clients import publish
from backend.testing.server import start_server

pytestmark = [pytest.mark.external, pytest.mark.anyio]

SSE = {"Accept": "text/event-stream"}


async def test_idle_streams_get_heartbeats_and_events_in_order(database_url: str) -> None:
    with start_server(database_url, extra_env={"HEARTBEAT_SECONDS": "0.5"}) as server:
        async with (
            httpx.AsyncClient(base_url=server.url, timeout=10) as client,
            client.stream("GET", "/topics/beat/events", headers=SSE) as response,
        ):
            assert response.headers["x-accel-buffering"] == "no"
            assert response.headers["cache-control"] == "no-store"
            lines = response.aiter_lines()
            assert (await anext(lines)).startswith("retry:")
            started = time.monotonic()
            with anyio.fail_after(3):
                while not (await anext(lines)).startswith(": ping - "):
                    pass
            assert time.monotonic() - started >= 0.4
            sent = await publish(client, server.url, "beat", 1, 2, 3)
            ids: list[str] = []
            with anyio.fail_after(5):
                while len(ids) < 3:
                    line = await anext(lines)
                    if line.startswith("id: "):
                        ids.append(line[4:])
            assert ids == [e["id"] for e in sent]
            metrics = (await client.get("/metrics")).text
            assert metric(metrics, "pgcast_hub_direct_deliveries_total") == 3
            assert metric(metrics, 'pgcast_events_delivered_total{transport="sse"}') == 3


def metric(text: str, sample: str) -> float:
    found = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.M)
    assert found, f"no {sample} in /metrics"
    return float(found.group(1))


async def test_a_slot_left_by_a_gone_client_is_reclaimed_when_needed(database_url: str) -> None:
    env = {"MAX_CONNECTIONS": "1", "HEARTBEAT_SECONDS": "60"}
    with start_server(database_url, extra_env=env) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            async with client.stream("GET", "/topics/slot/events", headers=SSE) as first:
                assert first.status_code == 200
                refused = await client.get("/topics/slot/events", headers=SSE)
                assert refused.status_code == 503
            async with client.stream("GET", "/topics/slot/events", headers=SSE) as second:
                assert second.status_code == 200
                sent = await publish(client, server.url, "slot", "x")
                lines = second.aiter_lines()
                with anyio.fail_after(5):
                    while await anext(lines) != f"id: {sent[0]['id']}":
                        pass


async def test_a_client_that_leaves_ends_its_stream_at_once(database_url: str) -> None:
    env = {"HEARTBEAT_SECONDS": "60"}  # no heartbeat would notice it for a minute
    gauge = 'pgcast_connections{transport="sse"}'
    with start_server(database_url, extra_env=env) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            async with client.stream("GET", "/topics/gone/events", headers=SSE) as response:
                # Held: a line iterator dropped after one line is finalized at some later
                # loop turn, and closing it closes the response, and so the stream.
                lines = response.aiter_lines()
                assert (await anext(lines)).startswith("retry:")
                assert metric((await client.get("/metrics")).text, gauge) == 1
            with anyio.fail_after(2):
                while metric((await client.get("/metrics")).text, gauge) != 0:
                    await anyio.sleep(0.05)
