"""Small real clients for external tests: SSE over httpx-sse, raw sockets, DB helpers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import orjson
from httpx_sse import ServerSentEvent, aconnect_sse


@asynccontextmanager
async def sse(
    client: httpx.AsyncClient, url: str, headers: dict[str, str] | None = None
) -> AsyncIterator[AsyncIterator[ServerSentEvent]]:
    """An open SSE stream; iterate it for events (comments are not events)."""
    async with aconnect_sse(client, "GET", url, headers=headers) as source:
        source.response.raise_for_status()
        yield source.aiter_sse()


async def next_events(stream: AsyncIterator[ServerSentEvent], count: int) -> list[ServerSentEvent]:
    """The next `count` real events.

    httpx-sse reports a message for every blank line once an id has been seen (a heartbeat
    comment, the retry hint), with empty data; browsers dispatch nothing for those, and
    neither do we.
    """
    got: list[ServerSentEvent] = []
    async for message in stream:
        if not message.data:
            continue
        got.append(message)
        if len(got) == count:
            break
    return got


async def publish(
    client: httpx.AsyncClient, base: str, topic: str, *items: Any
) -> list[dict[str, Any]]:
    """POST events (their `data`) and return the committed envelopes."""
    body = [{"data": item} for item in items]
    response = await client.post(f"{base}/topics/{topic}/events", json=body)
    assert response.status_code == 201, response.text
    envelopes: list[dict[str, Any]] = orjson.loads(response.content)["events"]
    return envelopes
