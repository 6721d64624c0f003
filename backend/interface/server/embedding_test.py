"""pgcast mounted inside another Starlette application, served by a real uvicorn."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import anyio
import httpx
import orjson
import pytest

from backend.connectors.embedded import free_port
from backend.testing.clients import next_events, sse
from backend.testing.server import wait_healthy

pytestmark = [pytest.mark.external, pytest.mark.anyio]


@pytest.fixture
def host_app(database_url: str) -> Iterator[str]:
    """The example host application (backend/testing/host_app.py) under uvicorn."""
    port = free_port()
    # Under another server a client that closed its stream is noticed by the next sweep
    # round (a quarter heartbeat), and uvicorn's shutdown waits for it: keep rounds short.
    env = {**os.environ, "DATABASE_URL": database_url, "HEARTBEAT_SECONDS": "1"}
    command = [sys.executable, "-m", "uvicorn", "backend.testing.host_app:app"]
    process = subprocess.Popen([*command, "--port", str(port), "--log-level", "warning"], env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(f"{base}/pgcast", process)
        yield base
    finally:
        process.terminate()
        process.wait(15)


async def test_mounted_pgcast_publishes_and_streams(host_app: str) -> None:
    async with httpx.AsyncClient(base_url=host_app, timeout=10) as client:
        assert (await client.get("/")).json() == {"app": "host"}
        headers = {"Accept": "text/event-stream"}
        async with sse(client, "/pgcast/topics/embedded/events", headers) as stream:
            published = await client.post("/pgcast/topics/embedded/events", json={"data": 7})
            assert published.status_code == 201
            with anyio.fail_after(5):
                (message,) = await next_events(stream, 1)
    assert orjson.loads(message.data)["data"] == 7
    assert message.id == published.json()["events"][0]["id"]
