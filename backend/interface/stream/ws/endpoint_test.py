"""The WebSocket protocol (`pgcast.v1`) against a real server process, through `/ws`.

Starting a server costs seconds, so the tests share one (`shared`, with a small frame limit
and a short send timeout) and keep to their own topics; only the shutdown test, which
stops its server, starts one of its own.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import orjson
import pytest
from httpx_ws import (
    AsyncWebSocketSession,
    WebSocketDisconnect,
    WebSocketNetworkError,
    WebSocketUpgradeError,
    aconnect_ws,
)
from websockets.asyncio import client as ws_client
from websockets.typing import Subprotocol

from backend.entities.event import format_id
from backend.testing import postgres
from backend.testing.clients import publish
from backend.testing.server import ServerProcess, start_server

pytestmark = [pytest.mark.external, pytest.mark.anyio]

WAIT = 15
LIMITS = {"WS_MAX_FRAME_BYTES": "2048", "SEND_TIMEOUT": "0.5"}


@pytest.fixture(scope="module")
def shared() -> Iterator[ServerProcess]:
    url = anyio.run(postgres.clone_template)
    try:
        with start_server(url, extra_env=LIMITS) as server:
            yield server
    finally:
        anyio.run(postgres.drop, url)


@asynccontextmanager
async def connect(
    url: str, subprotocols: tuple[str, ...] = ("pgcast.v1",)
) -> AsyncIterator[AsyncWebSocketSession]:
    """A session on /ws; no subprotocols means no Sec-WebSocket-Protocol header at all."""
    async with (
        httpx.AsyncClient() as client,
        aconnect_ws(
            url.replace("http", "ws", 1) + "/ws",
            client,
            subprotocols=list(subprotocols) or None,
            session_class=AsyncWebSocketSession,
        ) as ws,
    ):
        yield ws


async def send(ws: AsyncWebSocketSession, **frame: Any) -> None:
    await ws.send_text(orjson.dumps(frame).decode())


async def receive(ws: AsyncWebSocketSession) -> dict[str, Any]:
    with anyio.fail_after(WAIT):
        frame: dict[str, Any] = orjson.loads(await ws.receive_text())
    return frame


async def receive_many(ws: AsyncWebSocketSession, count: int) -> list[dict[str, Any]]:
    return [await receive(ws) for _ in range(count)]


async def subscribe(ws: AsyncWebSocketSession, sub: str | int, topic: str, **extra: Any) -> None:
    await send(ws, op="subscribe", id=sub, topic=topic, **extra)
    assert await receive(ws) == {"op": "subscribed", "id": sub}


async def assert_alive(ws: AsyncWebSocketSession) -> None:
    await send(ws, op="ping")
    assert await receive(ws) == {"op": "pong"}


def event_frame(sub: str | int, envelope: dict[str, Any]) -> dict[str, Any]:
    return {"op": "event", "sub": sub, **envelope}


async def test_subprotocol_is_negotiated(shared: ServerProcess) -> None:
    async with connect(shared.url) as ws:
        assert ws.subprotocol == "pgcast.v1"
        await assert_alive(ws)
    async with connect(shared.url, subprotocols=()) as ws:
        assert ws.subprotocol is None
        await assert_alive(ws)
    with pytest.raises(WebSocketUpgradeError) as refused:
        async with connect(shared.url, subprotocols=("other.v2",)):
            pass
    assert refused.value.response.status_code == 403


async def test_events_published_over_http_reach_the_subscription(shared: ServerProcess) -> None:
    async with httpx.AsyncClient() as client, connect(shared.url) as ws:
        await subscribe(ws, "orders", "orders.*")
        response = await client.post(
            f"{shared.url}/topics/orders.created/events",
            json={"data": {"n": 1}, "type": "created", "key": "o1"},
        )
        (envelope,) = response.json()["events"]
        frame = await receive(ws)
    assert envelope["topic"] == "orders.created"
    assert frame == event_frame("orders", envelope)


async def test_publish_op_acknowledges_and_delivers(shared: ServerProcess) -> None:
    async with connect(shared.url) as ws:
        await subscribe(ws, 7, "jobs.>")
        await send(ws, op="publish", ref="r1", topic="jobs.a.b", data=[1, 2], type="t", key="k")
        frames = await receive_many(ws, 2)
        await send(ws, op="publish", ref=2.5, topic="jobs.c", data=None)
        second = await receive_many(ws, 2)
    published, event = sorted(frames, key=lambda f: f["op"], reverse=True)
    assert published["op"] == "published"
    assert published["ref"] == "r1"
    (envelope,) = published["events"]
    assert (envelope["topic"], envelope["data"], envelope["type"], envelope["key"]) == (
        "jobs.a.b",
        [1, 2],
        "t",
        "k",
    )
    assert event == event_frame(7, envelope)
    acked = next(f for f in second if f["op"] == "published")
    assert acked["ref"] == 2.5
    assert acked["events"][0]["id"] > envelope["id"]


async def test_two_subscriptions_share_one_socket(shared: ServerProcess) -> None:
    async with httpx.AsyncClient() as client, connect(shared.url) as ws:
        await subscribe(ws, "a", "a.>")
        await subscribe(ws, "b", "b.*")
        await publish(client, shared.url, "c", "neither")
        (a1,) = await publish(client, shared.url, "a.x", "a1")
        (b1,) = await publish(client, shared.url, "b.y", "b1")
        (a2,) = await publish(client, shared.url, "a.x.z", "a2")
        frames = await receive_many(ws, 3)
        await assert_alive(ws)
    by_sub = {sub: [f for f in frames if f["sub"] == sub] for sub in ("a", "b")}
    assert by_sub == {
        "a": [event_frame("a", a1), event_frame("a", a2)],
        "b": [event_frame("b", b1)],
    }


async def test_unsubscribe_stops_delivery(shared: ServerProcess) -> None:
    async with httpx.AsyncClient() as client, connect(shared.url) as ws:
        delivered = await ws_metric(client, shared.url, "pgcast_events_delivered_total")
        await subscribe(ws, "old", "u")
        (first,) = await publish(client, shared.url, "u", 1)
        assert await receive(ws) == event_frame("old", first)
        await send(ws, op="unsubscribe", id="old")
        assert await receive(ws) == {"op": "unsubscribed", "id": "old"}
        await subscribe(ws, "new", "u")
        (second,) = await publish(client, shared.url, "u", 2)
        assert await receive(ws) == event_frame("new", second)
        await assert_alive(ws)
        after = await ws_metric(client, shared.url, "pgcast_events_delivered_total")
    assert after - delivered == 2


async def test_live_events_are_written_directly_while_the_subscription_waits(
    shared: ServerProcess,
) -> None:
    async with httpx.AsyncClient() as client, connect(shared.url) as ws:
        before = await hub_direct(client, shared.url)
        await subscribe(ws, 7, "direct")
        sent = await publish(client, shared.url, "direct", 1, 2, 3)
        assert await receive_many(ws, 3) == [event_frame(7, e) for e in sent]
        assert await hub_direct(client, shared.url) - before == 3


async def test_no_event_follows_unsubscribed_while_events_keep_coming(
    shared: ServerProcess,
) -> None:
    async with httpx.AsyncClient() as client, connect(shared.url) as ws:
        await subscribe(ws, "busy", "flood")
        async with anyio.create_task_group() as tg:

            async def flood() -> None:
                while True:
                    await publish(client, shared.url, "flood", *range(5))

            tg.start_soon(flood)
            assert (await receive(ws))["sub"] == "busy"
            await send(ws, op="unsubscribe", id="busy")
            while (frame := await receive(ws))["op"] != "unsubscribed":
                assert frame["sub"] == "busy"
            await anyio.sleep(0.3)  # events keep being published meanwhile
            await assert_alive(ws)
            tg.cancel_scope.cancel()


async def test_idle_subscriptions_leave_the_hub_on_unsubscribe_and_on_disconnect(
    server: ServerProcess,
) -> None:
    """An idle subscription is parked, with no task of its own (runners.py): unsubscribing
    one, and then closing the socket, must still take each off the hub at once."""
    async with httpx.AsyncClient() as client:
        async with connect(server.url) as ws:
            for sub in ("a", "b", "c"):
                await subscribe(ws, sub, f"parked.{sub}")
            (first,) = await publish(client, server.url, "parked.a", 1)
            assert await receive(ws) == event_frame("a", first)
            assert await subscriptions(client, server.url) == 3
            await send(ws, op="unsubscribe", id="b")
            assert await receive(ws) == {"op": "unsubscribed", "id": "b"}
            assert await subscriptions(client, server.url) == 2
            await publish(client, server.url, "parked.b", 2)
            (third,) = await publish(client, server.url, "parked.c", 3)
            assert await receive(ws) == event_frame("c", third)  # nothing for `b` before it
        with anyio.fail_after(WAIT):
            while await subscriptions(client, server.url) != 0:
                await anyio.sleep(0.02)


async def subscriptions(client: httpx.AsyncClient, url: str) -> float:
    text = (await client.get(f"{url}/metrics")).text
    found = re.search(r"^pgcast_subscriptions (\S+)$", text, re.M)
    assert found, "no pgcast_subscriptions in /metrics"
    return float(found.group(1))


async def hub_direct(client: httpx.AsyncClient, url: str) -> float:
    text = (await client.get(f"{url}/metrics")).text
    found = re.search(r"^pgcast_hub_direct_deliveries_total (\S+)$", text, re.M)
    assert found, "no pgcast_hub_direct_deliveries_total in /metrics"
    return float(found.group(1))


async def test_resume_after_last_id_gets_exactly_the_rest(shared: ServerProcess) -> None:
    async with httpx.AsyncClient() as client:
        published = await publish(client, shared.url, "r", *range(5))
        async with connect(shared.url) as ws:
            await subscribe(ws, "r", "r", after=published[1]["id"])
            backlog = await receive_many(ws, 3)
            live = await publish(client, shared.url, "r", "live")
            fresh = await receive(ws)
            await assert_alive(ws)
    assert backlog == [event_frame("r", e) for e in published[2:]]
    assert fresh == event_frame("r", live[0])


async def test_unknown_cursor_resets_to_the_start(shared: ServerProcess) -> None:
    future = format_id(10**12)
    async with httpx.AsyncClient() as client:
        published = await publish(client, shared.url, "z", "a", "b")
        async with connect(shared.url) as ws:
            await subscribe(ws, "z", "z", after=future)
            reset = await receive(ws)
            events = await receive_many(ws, 2)
    assert reset["op"] == "reset"
    assert (reset["sub"], reset["reason"]) == ("z", "unknown")
    assert reset["oldest"] == format_id(1)  # nothing was pruned from the shared log
    assert future in reset["message"]
    assert events == [event_frame("z", e) for e in published]


async def test_bad_frames_get_error_frames_and_the_socket_stays_open(
    shared: ServerProcess,
) -> None:
    cases: list[tuple[str, str, dict[str, Any]]] = [
        ("{not json", "invalid_json", {}),
        ("[1, 2]", "invalid_frame", {}),
        ('{"op": 3}', "invalid_frame", {}),
        ('{"op": "dance"}', "unknown_op", {}),
        ('{"op": "subscribe", "id": [1], "topic": "t"}', "invalid_frame", {}),
        ('{"op": "subscribe", "id": true, "topic": "t"}', "invalid_frame", {"id": True}),
        ('{"op": "subscribe", "id": "m"}', "invalid_frame", {"id": "m"}),
        (
            '{"op": "subscribe", "id": "x", "topic": "t", "fliter": ""}',
            "invalid_frame",
            {"id": "x"},
        ),
        ('{"op": "subscribe", "id": "t1", "topic": "bad..topic"}', "invalid_topic", {"id": "t1"}),
        (
            '{"op": "subscribe", "id": 5, "topic": "t", "filter": "nope"}',
            "invalid_filter",
            {"id": 5},
        ),
        (
            '{"op": "subscribe", "id": "c", "topic": "t", "after": "x1"}',
            "invalid_cursor",
            {"id": "c"},
        ),
        ('{"op": "subscribe", "id": "dup", "topic": "t"}', "duplicate_id", {"id": "dup"}),
        ('{"op": "unsubscribe", "id": "ghost"}', "unknown_id", {"id": "ghost"}),
        ('{"op": "publish", "ref": 1, "topic": "a b", "data": 1}', "invalid_topic", {"ref": 1}),
        ('{"op": "publish", "ref": "p", "topic": "t"}', "invalid_frame", {"ref": "p"}),
        (
            '{"op": "publish", "ref": "q", "topic": "t", "data": 1, "type": 3}',
            "invalid_event",
            {"ref": "q"},
        ),
    ]
    async with connect(shared.url) as ws:
        await subscribe(ws, "dup", "t")
        for text, code, echo in cases:
            await ws.send_text(text)
            frame = await receive(ws)
            assert frame.pop("message"), text
            assert frame == {"op": "error", **echo, "code": code}, text
        await ws.send_bytes(b'{"op": "ping"}')
        binary = await receive(ws)
        assert (binary["op"], binary["code"]) == ("error", "invalid_frame")
        await assert_alive(ws)


async def test_too_many_subscriptions(shared: ServerProcess) -> None:
    async with connect(shared.url) as ws:
        for n in range(100):
            await send(ws, op="subscribe", id=n, topic="many")
        frames = await receive_many(ws, 100)
        await send(ws, op="subscribe", id="extra", topic="many")
        refused = await receive(ws)
        await send(ws, op="unsubscribe", id=0)
        assert await receive(ws) == {"op": "unsubscribed", "id": 0}
        await subscribe(ws, "extra", "many")
    assert sorted(f["id"] for f in frames) == list(range(100))
    assert (refused["id"], refused["code"]) == ("extra", "too_many_subscriptions")


async def test_frame_over_the_size_limit_closes_with_1009(shared: ServerProcess) -> None:
    async with connect(shared.url) as ws:
        await send(ws, op="publish", ref=1, topic="size", data="x" * 1500)
        assert (await receive(ws))["op"] == "published"
        await send(ws, op="publish", ref=2, topic="size", data="x" * 3000)
        with pytest.raises(WebSocketDisconnect) as closed:
            await receive(ws)
    assert closed.value.code == 1009


async def test_shutdown_closes_with_1001(server: ServerProcess) -> None:
    statuses: list[int] = []

    async def stop() -> None:
        statuses.append(await anyio.to_thread.run_sync(server.stop))

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg, connect(server.url) as ws:
            await subscribe(ws, "s", "s")
            tg.start_soon(stop)
            with pytest.raises(WebSocketDisconnect) as closed:
                await ws.receive_text()
    assert closed.value.code == 1001
    assert statuses == [0]


async def test_a_client_that_stops_reading_is_dropped(shared: ServerProcess) -> None:
    chunk = "x" * 500_000
    sent = 0
    async with httpx.AsyncClient(timeout=30) as client, connect(shared.url) as ws:
        await subscribe(ws, "big", "big")
        deadline = anyio.current_time() + WAIT
        while await ws_metric(client, shared.url, "pgcast_connections") > 0:
            assert anyio.current_time() < deadline, "the server never gave up on the stalled client"
            await publish(client, shared.url, "big", *[chunk] * 5)
            sent += 5
            if sent >= 100:  # the buffers are full by now: keep the server writing, gently
                await anyio.sleep(0.05)
        received, ended = await read_until_closed(ws)
    assert received < sent
    assert isinstance(ended, WebSocketNetworkError)  # the socket was dropped, no close frame


async def read_until_closed(ws: AsyncWebSocketSession) -> tuple[int, Exception]:
    """How many frames were still buffered, and how the session ended."""
    received = 0
    with anyio.fail_after(WAIT):
        while True:
            try:
                await ws.receive_text()
            except (WebSocketDisconnect, WebSocketNetworkError) as exc:
                return received, exc
            received += 1


async def ws_metric(client: httpx.AsyncClient, url: str, name: str) -> float:
    """A metric's `transport="ws"` sample; 0 before the server has recorded one."""
    text = (await client.get(f"{url}/metrics")).text
    found = re.search(rf'^{name}\{{transport="ws"\}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


async def test_queue_ops_consume_ack_nack_and_release(shared: ServerProcess) -> None:
    async with httpx.AsyncClient(base_url=shared.url) as client, connect(shared.url) as ws:
        await client.post(
            "/queues/wsq/messages", json=[{"data": 1}, {"data": 2, "max_attempts": 1}]
        )
        await send(ws, op="consume", id="c", queue="wsq", prefetch=2)
        assert await receive(ws) == {"op": "subscribed", "id": "c"}
        first, second = await receive_many(ws, 2)
        assert (first["op"], first["sub"], first["data"], first["attempt"]) == (
            "message",
            "c",
            1,
            1,
        )
        await send(ws, op="ack", message=first["id"])
        assert await receive(ws) == {"op": "acked", "message": first["id"]}
        await send(ws, op="ack", message=first["id"])
        error = await receive(ws)
        assert (error["op"], error["code"], error["message_id"]) == (
            "error",
            "unknown_message",
            first["id"],
        )
        assert error["message"]
        await send(ws, op="extend", message=second["id"], seconds=60)
        assert (await receive(ws))["op"] == "extended"
        await send(ws, op="nack", message=second["id"], error="bad")
        assert await receive(ws) == {"op": "nacked", "message": second["id"], "state": "dead"}
        await client.post("/queues/wsq/messages", json={"data": 3})
        third = await receive(ws)
        assert third["data"] == 3
        await send(ws, op="unsubscribe", id="c")
        assert await receive(ws) == {"op": "unsubscribed", "id": "c"}
        with anyio.fail_after(15):
            while (await client.get("/queues/wsq")).json()["ready"] != 1:
                await anyio.sleep(0.05)


async def test_nack_takes_delay_seconds_or_its_deprecated_alias_delay(
    shared: ServerProcess,
) -> None:
    async with httpx.AsyncClient(base_url=shared.url) as client, connect(shared.url) as ws:
        await client.post("/queues/wsdelay/messages", json=[{"data": n} for n in range(3)])
        await send(ws, op="consume", id="d", queue="wsdelay", prefetch=3)
        assert await receive(ws) == {"op": "subscribed", "id": "d"}
        first, second, third = await receive_many(ws, 3)
        await send(ws, op="nack", message=third["id"], delay_seconds=60, delay=30)
        conflict = await receive(ws)
        await send(ws, op="nack", message=first["id"], delay_seconds=60)
        assert await receive(ws) == {"op": "nacked", "message": first["id"], "state": "ready"}
        await send(ws, op="nack", message=second["id"], delay=60)
        assert await receive(ws) == {"op": "nacked", "message": second["id"], "state": "ready"}
        await send(ws, op="nack", message=third["id"], delay_seconds=60, delay=60.0)
        assert await receive(ws) == {"op": "nacked", "message": third["id"], "state": "ready"}
        stats = (await client.get("/queues/wsdelay")).json()
    assert (conflict["op"], conflict["code"], conflict["message_id"]) == (
        "error",
        "invalid_frame",
        third["id"],
    )
    assert "'delay_seconds'" in conflict["message"]
    assert "'delay'" in conflict["message"]
    assert (stats["ready"], stats["delayed"]) == (0, 3)


async def test_settlements_sent_back_to_back_are_answered_in_order(
    shared: ServerProcess,
) -> None:
    """Acks and nacks sent without waiting commit while the socket reads on; the answers,
    errors included, come in frame order, and a later frame waits for them all."""
    async with httpx.AsyncClient(base_url=shared.url) as client, connect(shared.url) as ws:
        await client.post("/queues/wspipe/messages", json=[{"data": n} for n in range(20)])
        await send(ws, op="consume", id="p", queue="wspipe", prefetch=20)
        assert await receive(ws) == {"op": "subscribed", "id": "p"}
        ids = [m["id"] for m in await receive_many(ws, 20)]
        for message_id in ids[:10]:
            await send(ws, op="ack", message=message_id)
        await send(ws, op="ack", message=ids[0])  # settled just before: not held any more
        await send(ws, op="nack", message=ids[10], delay_seconds=60, error="later")
        await send(ws, op="ack", message="no such")
        for message_id in ids[11:]:
            await send(ws, op="ack", message=message_id)
        await send(ws, op="ping")
        answers = await receive_many(ws, 23)
        stats = (await client.get("/queues/wspipe")).json()
    assert answers[:10] == [{"op": "acked", "message": m} for m in ids[:10]]
    assert [(a["op"], a.get("code"), a.get("message_id")) for a in answers[10:13]] == [
        ("error", "unknown_message", ids[0]),
        ("nacked", None, None),
        ("error", "unknown_message", "no such"),
    ]
    assert answers[11] == {"op": "nacked", "message": ids[10], "state": "ready"}
    assert answers[13:22] == [{"op": "acked", "message": m} for m in ids[11:]]
    assert answers[22] == {"op": "pong"}
    assert (stats["ready"], stats["delayed"], stats["leased"]) == (0, 1, 0)


async def test_unsubscribe_right_after_consume_strands_nothing(shared: ServerProcess) -> None:
    """Unsubscribing while a claim is under way: every message the socket got is returned as
    a disconnect (dead here, at max_attempts 1), every other one is ready with no attempt
    used, and none stays leased until its lease runs out."""
    async with httpx.AsyncClient(base_url=shared.url) as client, connect(shared.url) as ws:
        await client.post(
            "/queues/wsgone/messages", json=[{"data": i, "max_attempts": 1} for i in range(40)]
        )
        got: set[str] = set()
        for round_ in range(15):
            await send(ws, op="consume", id=round_, queue="wsgone", prefetch=2, lease=4)
            await anyio.sleep(0.001 * (round_ % 8))
            await send(ws, op="unsubscribe", id=round_)
            while (frame := await receive(ws))["op"] != "unsubscribed":
                if frame["op"] == "message":
                    got.add(frame["id"])
        with anyio.fail_after(2):  # well inside the lease: returned, not reaped
            while (stats := (await client.get("/queues/wsgone")).json())["leased"]:
                await anyio.sleep(0.05)
        dead = (await client.get("/queues/wsgone/dead", params={"limit": 100})).json()["messages"]
        assert {m["id"] for m in dead} == got
        assert stats["ready"] == 40 - len(got)
        ready = (await client.get("/queues/wsgone/messages", params={"limit": 100})).json()
        assert [m["attempt"] for m in ready["messages"]] == [1] * (40 - len(got))


async def test_a_consumer_that_keeps_pace_has_messages_kept_and_given_back_unused(
    shared: ServerProcess,
) -> None:
    """Read-ahead over a real socket: once the client has acked one message quickly, the
    server keeps more claimed for it than its prefetch of 1, and unsubscribing gives
    those back with no attempt used (the one the client held counts, as a disconnect)."""
    async with httpx.AsyncClient(base_url=shared.url) as client, connect(shared.url) as ws:
        await client.post("/queues/wsahead/messages", json=[{"data": n} for n in range(10)])
        await send(ws, op="consume", id="a", queue="wsahead", prefetch=1)
        assert await receive(ws) == {"op": "subscribed", "id": "a"}
        first = await receive(ws)
        await send(ws, op="ack", message=first["id"])
        answers = await receive_many(ws, 2)  # "acked" and the next message, in either order
        second = next(frame for frame in answers if frame["op"] == "message")
        assert {frame["op"] for frame in answers} == {"acked", "message"}
        with anyio.fail_after(5):
            while (leased := (await client.get("/queues/wsahead")).json()["leased"]) < 2:
                await anyio.sleep(0.01)
        await send(ws, op="unsubscribe", id="a")
        assert await receive(ws) == {"op": "unsubscribed", "id": "a"}
        with anyio.fail_after(2):
            while (stats := (await client.get("/queues/wsahead")).json())["leased"]:
                await anyio.sleep(0.05)
        ready = (await client.get("/queues/wsahead/messages", params={"limit": 100})).json()
    assert 2 <= leased <= 9  # the client's one, and up to 8 kept
    assert stats["ready"] == 9
    # The claim just above counts one attempt more than each message had: the held one
    # had used one, the kept ones none.
    attempts = {m["data"]: m["attempt"] for m in ready["messages"]}
    assert attempts == {n: 2 if n == second["data"] else 1 for n in range(1, 10)}


async def _negotiated_extensions(url: str) -> str | None:
    """The extensions header of a handshake that offers permessage-deflate."""
    ws_url = url.replace("http", "ws", 1) + "/ws"
    async with ws_client.connect(ws_url, subprotocols=[Subprotocol("pgcast.v1")]) as ws:
        assert ws.response is not None
        return ws.response.headers.get("Sec-WebSocket-Extensions")


async def test_compression_is_off_unless_enabled(shared: ServerProcess, database_url: str) -> None:
    assert await _negotiated_extensions(shared.url) is None
    with start_server(database_url, extra_env={"WS_COMPRESSION": "true"}) as server:
        assert "permessage-deflate" in (await _negotiated_extensions(server.url) or "")
