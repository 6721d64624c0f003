"""Queues over HTTP: enqueue, settle, dead-letter, backoff and bad requests against the app
in-process; an SSE consumer (an endless response) against a real server."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import httpx
import orjson
import pytest

from backend.core.settings import Settings
from backend.testing.clients import sse
from backend.testing.in_process import app_client
from backend.testing.server import ServerProcess, start_server

pytestmark = [pytest.mark.anyio]

SSE = {"Accept": "text/event-stream"}
FAST = {
    "QUEUE_BACKOFF_BASE_SECONDS": "0.2",
    "QUEUE_BACKOFF_CAP_SECONDS": "1",
    "QUEUE_REAP_INTERVAL_SECONDS": "0.1",
    "POLL_INTERVAL_SECONDS": "0.3",
}


@pytest.fixture
def queue_server(database_url: str) -> Iterator[ServerProcess]:
    with start_server(database_url, extra_env=FAST) as server:
        yield server


@pytest.fixture
async def client(database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """The app in-process with the same fast queue settings, on this test's database."""
    settings = Settings.model_validate({name.lower(): value for name, value in FAST.items()})
    async with app_client(settings, database_url) as client:
        yield client


@pytest.mark.integrated
async def test_enqueue_claim_and_settle(client: httpx.AsyncClient) -> None:
    made = await client.post(
        "/queues/jobs/messages",
        json=[{"data": {"n": 1}, "key": "a"}, {"data": {"n": 2}, "max_attempts": 2}],
    )
    assert made.status_code == 201
    stored = made.json()["messages"]
    assert [m["data"] for m in stored] == [{"n": 1}, {"n": 2}]
    assert set(stored[0]) >= {
        "id",
        "queue",
        "data",
        "key",
        "attempt",
        "max_attempts",
        "enqueued_at",
        "available_at",
    }
    claim = (await client.get("/queues/jobs/messages", params={"limit": 2})).json()["messages"]
    assert [m["attempt"] for m in claim] == [1, 1]
    first, second = claim
    ack = await client.post(
        f"/queues/jobs/messages/{first['id']}/ack", json={"lease": first["lease"]}
    )
    assert ack.json() == {"id": first["id"], "state": "acked"}
    again = await client.post(
        f"/queues/jobs/messages/{first['id']}/ack", json={"lease": first["lease"]}
    )
    assert again.status_code == 409
    extended = await client.post(
        f"/queues/jobs/messages/{second['id']}/extend",
        json={"lease": second["lease"], "seconds": 60},
    )
    assert extended.status_code == 200
    nacked = await client.post(
        f"/queues/jobs/messages/{second['id']}/nack",
        json={"lease": second["lease"], "delay_seconds": 0, "error": "nope"},
    )
    assert nacked.json()["state"] == "ready"
    stats = (await client.get("/queues/jobs")).json()
    assert (stats["ready"], stats["leased"], stats["dead"]) == (1, 0, 0)
    listing = (await client.get("/queues")).json()["queues"]
    assert [q["queue"] for q in listing] == ["jobs"]


@pytest.mark.integrated
async def test_stale_ack_after_lease_expiry_gets_409(client: httpx.AsyncClient) -> None:
    await client.post("/queues/lease/messages", json={"data": 1})
    (stale,) = (await client.get("/queues/lease/messages", params={"lease": 0.2})).json()[
        "messages"
    ]
    with anyio.fail_after(10):
        while True:
            fresh = (await client.get("/queues/lease/messages", params={"wait": 2})).json()[
                "messages"
            ]
            if fresh:
                break
    assert fresh[0]["id"] == stale["id"]
    assert fresh[0]["attempt"] == 2
    late = await client.post(
        f"/queues/lease/messages/{stale['id']}/ack", json={"lease": stale["lease"]}
    )
    assert late.status_code == 409
    assert late.json()["error"] == "conflict"
    ok = await client.post(
        f"/queues/lease/messages/{fresh[0]['id']}/ack", json={"lease": fresh[0]["lease"]}
    )
    assert ok.status_code == 200


@pytest.mark.external
async def test_sse_consumer_disconnect_requeues_at_once(queue_server: ServerProcess) -> None:
    async with httpx.AsyncClient(base_url=queue_server.url, timeout=10) as client:
        await client.post("/queues/sse/messages", json=[{"data": 1}, {"data": 2}])
        async with sse(client, "/queues/sse/messages?prefetch=2&lease=300", SSE) as stream:
            got = []
            with anyio.fail_after(5):
                async for message in stream:
                    if message.event == "message" and message.data:
                        got.append(orjson.loads(message.data))
                    if len(got) == 2:
                        break
            assert (await client.get("/queues/sse")).json()["leased"] == 2
            first = got[0]
            await client.post(
                f"/queues/sse/messages/{first['id']}/ack", json={"lease": first["lease"]}
            )
        with anyio.fail_after(5):
            while (stats := (await client.get("/queues/sse")).json())["leased"]:
                await anyio.sleep(0.05)
        assert stats["ready"] == 1, stats
        (back,) = (await client.get("/queues/sse/messages")).json()["messages"]
        assert back["id"] == got[1]["id"]


@pytest.mark.integrated
async def test_dead_letter_list_and_requeue(client: httpx.AsyncClient) -> None:
    await client.post(
        "/queues/dl/messages", json=[{"data": i, "max_attempts": 1} for i in range(3)]
    )
    claimed = (await client.get("/queues/dl/messages", params={"limit": 3})).json()["messages"]
    for m in claimed:
        r = await client.post(
            f"/queues/dl/messages/{m['id']}/nack", json={"lease": m["lease"], "error": "bad"}
        )
        assert r.json()["state"] == "dead"
    dead = (await client.get("/queues/dl/dead")).json()["messages"]
    assert [m["last_error"] for m in dead] == ["bad"] * 3
    one = await client.post(f"/queues/dl/dead/{dead[0]['id']}/requeue")
    assert one.json()["messages"][0]["attempt"] == 0
    rest = await client.post("/queues/dl/dead/requeue")
    assert rest.json() == {"requeued": 2}
    assert (await client.get("/queues/dl")).json()["ready"] == 3


async def _claim_timed(
    client: httpx.AsyncClient, path: str, wait: float
) -> tuple[dict[str, Any], float]:
    """One long-poll claim of exactly one message, and the seconds it took to come."""
    started = time.monotonic()
    (message,) = (await client.get(path, params={"wait": wait})).json()["messages"]
    return message, time.monotonic() - started


async def test_backoff_delay_is_respected(queue_server: ServerProcess) -> None:
    """A nack's delay_seconds (1.5 s) outlasts the backoff cap (1 s): ignoring it would
    make the message claimable within 0.2 s."""
    async with httpx.AsyncClient(base_url=queue_server.url) as client:
        await client.post("/queues/slow/messages", json={"data": 1, "delay_seconds": 0.6})
        assert (await client.get("/queues/slow/messages")).json()["messages"] == []
        assert (await client.get("/queues/slow")).json()["delayed"] == 1
        m, _ = await _claim_timed(client, "/queues/slow/messages", 3)
        nacked = await client.post(
            f"/queues/slow/messages/{m['id']}/nack",
            json={"lease": m["lease"], "delay_seconds": 1.5},
        )
        assert nacked.json()["state"] == "ready"
        again, took = await _claim_timed(client, "/queues/slow/messages", 5)
        assert (again["id"], again["attempt"]) == (m["id"], 2)
        assert 1.4 <= took < 1.5 + 0.5, f"claimable after {took:.2f} s, not 1.5 s"


async def test_long_poll_wakes_when_a_delayed_message_is_due(shared_server: ServerProcess) -> None:
    """POLL_INTERVAL is 2 s here: the claim comes when the message is due, not on a poll.
    Attempt 1's backoff (a nack without delay) is the documented 0.5-1 s with base 1 s."""
    async with httpx.AsyncClient(base_url=shared_server.url, timeout=10) as client:
        await client.post("/queues/due/messages", json={"data": 1})
        m, _ = await _claim_timed(client, "/queues/due/messages", 1)
        await client.post(
            f"/queues/due/messages/{m['id']}/nack",
            json={"lease": m["lease"], "delay_seconds": 1.3},
        )
        m, took = await _claim_timed(client, "/queues/due/messages", 5)
        assert 1.2 <= took < 1.3 + 0.6, f"claimed after {took:.2f} s, not 1.3 s"
        await client.post("/queues/due/messages", json={"data": 2})
        first, _ = await _claim_timed(client, "/queues/due/messages?limit=1", 1)
        assert first["attempt"] == 1
        await client.post(
            f"/queues/due/messages/{first['id']}/nack", json={"lease": first["lease"]}
        )
        again, took = await _claim_timed(client, "/queues/due/messages", 5)
        assert again["id"] == first["id"]
        assert 0.45 <= took < 1.0 + 0.6, f"attempt 1 backed off {took:.2f} s, not 0.5-1 s"


@pytest.mark.integrated
@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("post", "/queues/bad..q/messages", {"data": 1}, 400, "invalid_queue"),
        ("post", "/queues/q/messages", {"data": 1, "max_attempts": 0}, 400, "invalid_event"),
        ("post", "/queues/q/messages", {"data": 1, "delay_seconds": -1}, 400, "invalid_event"),
        ("post", "/queues/q/messages", {"nodata": 1}, 400, "invalid_event"),
        ("post", "/queues/q/messages/1/ack", {"nolease": 1}, 400, "invalid_request"),
        ("post", "/queues/nosuchqueue/messages/1/ack", {"lease": "x"}, 404, "not_found"),
        ("post", "/queues/q/messages/abc/ack", {"lease": "x"}, 404, "not_found"),
        ("post", "/queues/q/dead/123/requeue", None, 404, "not_found"),
    ],
)
async def test_bad_queue_requests(
    client: httpx.AsyncClient, method: str, path: str, body: object, status: int, code: str
) -> None:
    response = await client.request(method, path, json=body)
    assert response.status_code == status, response.text
    assert response.json()["error"] == code


@pytest.mark.integrated
async def test_a_replayed_enqueue_shows_the_messages_without_anyones_lease(
    client: httpx.AsyncClient,
) -> None:
    body = [{"data": {"n": 1}}]
    key = {"Idempotency-Key": "replay-1"}
    first = await client.post("/queues/replayed/messages", json=body, headers=key)
    assert first.headers["Idempotent-Replayed"] == "false"
    (claimed,) = (await client.get("/queues/replayed/messages?lease=30")).json()["messages"]
    assert "lease" in claimed
    again = await client.post("/queues/replayed/messages", json=body, headers=key)
    assert (again.status_code, again.headers["Idempotent-Replayed"]) == (201, "true")
    (replayed,) = again.json()["messages"]
    assert replayed["id"] == first.json()["messages"][0]["id"] == claimed["id"]
    assert replayed["attempt"] == 1  # its state now: claimed once
    assert "lease" not in replayed
    assert "lease_until" not in replayed


@pytest.mark.integrated
async def test_head_is_refused_and_leases_nothing(client: httpx.AsyncClient) -> None:
    await client.post("/queues/headed/messages", json={"data": 1})
    for accept in ("application/json", "text/event-stream"):
        refused = await client.head("/queues/headed/messages", headers={"Accept": accept})
        assert refused.status_code == 405
    stats = (await client.get("/queues/headed")).json()
    assert (stats["ready"], stats["leased"]) == (1, 0)
