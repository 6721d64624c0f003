"""MAX_PATTERNS against a real server: the cap's error, and many patterns delivering right."""

from __future__ import annotations

import httpx
import orjson
import pytest

from backend.testing.clients import next_events, publish, sse
from backend.testing.server import ServerProcess

pytestmark = [pytest.mark.external, pytest.mark.anyio]

SSE = {"Accept": "text/event-stream"}
DEFAULT_MAX_PATTERNS = 100


def _topics(count: int) -> tuple[tuple[str, str], ...]:
    return tuple(("topic", f"caps.*.x{number}") for number in range(count))


@pytest.mark.parametrize("headers", [{}, SSE], ids=["page", "sse"])
async def test_more_patterns_than_max_patterns_get_400_too_many_patterns(
    shared_server: ServerProcess, headers: dict[str, str]
) -> None:
    async with httpx.AsyncClient() as client:
        refused = await client.get(
            f"{shared_server.url}/events",
            params=httpx.QueryParams(_topics(DEFAULT_MAX_PATTERNS + 1)),
            headers=headers,
        )
    assert refused.status_code == 400
    assert refused.headers["content-type"] == "application/json"
    body = refused.json()
    assert body["error"] == "too_many_patterns"
    assert "101 topic patterns; at most 100" in body["message"]


async def test_max_patterns_are_accepted_and_each_event_arrives_once(
    shared_server: ServerProcess,
) -> None:
    base = shared_server.url
    params = [*_topics(DEFAULT_MAX_PATTERNS - 2), ("topic", "caps.>"), ("topic", "caps.a.x7")]
    url = f"{base}/events?" + str(httpx.QueryParams([*params, ("after", "latest")]))
    async with httpx.AsyncClient(timeout=10) as client:
        page = await client.get(url)
        assert page.status_code == 200, page.text
        async with sse(client, url, SSE) as stream:
            await publish(client, base, "caps.a.x7", 1)
            await publish(client, base, "other", 2)
            await publish(client, base, "caps.b.x99", 3)
            got = await next_events(stream, 2)
    assert [orjson.loads(message.data)["data"] for message in got] == [1, 3]
