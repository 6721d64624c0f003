"""The rules every client input shares, against a real server (docs/protocol.md §1.2):

- every JSON number comes back digit for digit, over HTTP, WebSocket, SQL publish, queues
  and table capture;
- JSON nests up to 1,024 levels on every route and op, and deeper is `invalid_json`;
- a NUL character in any string or key is `invalid_event` naming where, and writes nothing;
- a token whose `exp` lies past what a date can show is a 401, never a 5xx.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest
from httpx_ws import WebSocketSession, WebSocketUpgradeError, connect_ws
from hypothesis import HealthCheck, given, settings

from backend.connectors.database import connect
from backend.interface.security.auth import MAX_EXPIRY
from backend.testing import postgres
from backend.testing.json_documents import DEPTH_LIMIT, documents, exact, nested
from backend.testing.security import auth_server, bearer, sign_claims
from backend.testing.server import ServerProcess, start_server

pytestmark = [pytest.mark.external]

PROPERTY = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    url = anyio.run(postgres.clone_template)
    try:
        with start_server(url) as process:
            yield process
            log = process.log()
            for sign in ("unexpected error", "Exception in ASGI application", "session failed"):
                assert sign not in log, log
    finally:
        anyio.run(postgres.drop, url)


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as session:
        yield session


@pytest.fixture(scope="module")
def ws(server: ServerProcess) -> Iterator[WebSocketSession]:
    with (
        httpx.Client() as http,
        connect_ws(
            server.url.replace("http", "ws", 1) + "/ws",
            http,
            subprotocols=["pgcast.v1"],
            session_class=WebSocketSession,
        ) as session,
    ):
        yield session


def post(client: httpx.Client, path: str, text: str, **headers: str) -> httpx.Response:
    return client.post(path, content=text.encode(), headers={**JSON, **headers})


def receive(ws: WebSocketSession) -> Any:
    return exact(ws.receive_text(timeout=10))


def assert_alive(ws: WebSocketSession) -> None:
    ws.send_text('{"op":"ping"}')
    assert receive(ws) == {"op": "pong"}


def next_event(client: httpx.Client, topic: str, after: str) -> dict[str, Any]:
    page = client.get(f"/topics/{topic}/events", params={"after": after, "limit": 1, "wait": 5})
    (event,) = exact(page.content)["events"]
    return dict(event)


def latest(client: httpx.Client, topic: str) -> str:
    return str(client.get(f"/topics/{topic}/events", params={"after": "latest"}).json()["next"])


async def sql_publish(database_url: str, topic: str, text: str) -> None:
    conn = await connect(database_url)
    try:
        await conn.execute("SELECT pgcast.publish($1, $2::text::jsonb)", topic, text)
    finally:
        await conn.close()


# Numbers


@PROPERTY
@given(text=documents())
def test_numbers_come_back_digit_for_digit_on_every_path(
    server: ServerProcess, client: httpx.Client, ws: WebSocketSession, text: str
) -> None:
    expected = exact(text)
    before = latest(client, "exact.http")
    published = post(client, "/topics/exact.http/events", f'{{"data":{text}}}')
    assert published.status_code == 201, published.text
    (envelope,) = exact(published.content)["events"]
    assert envelope["data"] == expected
    assert next_event(client, "exact.http", before)["data"] == expected

    key = {"Idempotency-Key": uuid.uuid4().hex}
    first = post(client, "/topics/exact.keyed/events", f'{{"data":{text}}}', **key)
    again = post(client, "/topics/exact.keyed/events", f'{{"data":{text}}}', **key)
    assert (first.status_code, again.headers["Idempotent-Replayed"]) == (201, "true"), again.text
    assert exact(again.content) == exact(first.content)
    assert exact(first.content)["events"][0]["data"] == expected

    ws.send_text(f'{{"op":"publish","ref":1,"topic":"exact.ws","data":{text}}}')
    answer = receive(ws)
    assert answer["op"] == "published", answer
    assert answer["events"][0]["data"] == expected

    before = latest(client, "exact.sql")
    anyio.run(sql_publish, server.database_url, "exact.sql", text)
    assert next_event(client, "exact.sql", before)["data"] == expected

    enqueued = post(client, "/queues/exact/messages", f'{{"data":{text}}}')
    assert enqueued.status_code == 201, enqueued.text
    assert exact(enqueued.content)["messages"][0]["data"] == expected
    (claimed,) = exact(client.get("/queues/exact/messages").content)["messages"]
    assert claimed["data"] == expected
    acked = client.post(
        f"/queues/exact/messages/{claimed['id']}/ack", json={"lease": claimed["lease"]}
    )
    assert acked.status_code == 200


def test_numbers_reach_subscribers_and_filters_exactly(
    client: httpx.Client, ws: WebSocketSession
) -> None:
    big = "18446744073709551616"
    ws.send_text(
        json.dumps(
            {"op": "subscribe", "id": "big", "topic": "exact.sub", "filter": f"data.n=eq.{big}"}
        )
    )
    assert receive(ws) == {"op": "subscribed", "id": "big"}
    for n in ("18446744073709551617", big):
        assert (
            post(client, "/topics/exact.sub/events", f'{{"data":{{"n":{n}}}}}').status_code == 201
        )
    event = receive(ws)
    assert (event["op"], event["data"]) == ("event", {"n": int(big)})
    ws.send_text('{"op":"unsubscribe","id":"big"}')
    assert receive(ws) == {"op": "unsubscribed", "id": "big"}


def first_sse_data(client: httpx.Client, path: str, **params: str) -> Any:
    """The `data:` of the first event on an SSE stream."""
    headers = {"Accept": "text/event-stream"}
    with client.stream("GET", path, params=params, headers=headers) as stream:
        for line in stream.iter_lines():
            if line.startswith("data: "):
                return exact(line.removeprefix("data: "))
    raise AssertionError("the stream ended without an event")


def test_numbers_keep_every_digit_over_sse(client: httpx.Client) -> None:
    text = '{"n":18446744073709551616,"d":0.1000000000000000000001,"e":-1E-400}'
    before = latest(client, "exact.sse")
    assert post(client, "/topics/exact.sse/events", f'{{"data":{text}}}').status_code == 201
    assert first_sse_data(client, "/topics/exact.sse/events", after=before)["data"] == exact(text)
    assert post(client, "/queues/exact.sse/messages", f'{{"data":{text}}}').status_code == 201
    message = first_sse_data(client, "/queues/exact.sse/messages")
    assert message["data"] == exact(text)


def test_captured_numeric_columns_keep_every_digit(
    server: ServerProcess, client: httpx.Client
) -> None:
    async def create() -> None:
        conn = await connect(server.database_url)
        try:
            await conn.execute("CREATE TABLE public.ledger (id int PRIMARY KEY, amount numeric)")
        finally:
            await conn.close()

    async def insert(amount: str) -> None:
        conn = await connect(server.database_url)
        try:
            await conn.execute("INSERT INTO ledger VALUES (1, $1::text::numeric)", amount)
        finally:
            await conn.close()

    anyio.run(create)
    assert client.put("/admin/captures/public.ledger").status_code == 200
    before = latest(client, "db.public.ledger")
    amount = "123456789012345678901234567890.1000000000000000000001"
    anyio.run(insert, amount)
    event = next_event(client, "db.public.ledger", before)
    assert event["data"]["new"] == exact(f'{{"id":1,"amount":{amount}}}')


@pytest.mark.parametrize("number", ["1e131072", "1e-16384", "1" * 131_073])
@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/topics/range/events", {}),
        ("/topics/range/events", {"Idempotency-Key": "range"}),
        ("/queues/range/messages", {}),
        ("/queues/range/messages", {"Idempotency-Key": "range"}),
    ],
)
def test_numbers_beyond_postgresql_numeric_are_refused(
    client: httpx.Client, path: str, headers: dict[str, str], number: str
) -> None:
    answer = post(client, path, f'{{"data":[{number}]}}', **headers)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"] == "invalid_event"
    assert "is out of range" in answer.json()["message"]
    assert client.get("/topics/range/events", params={"after": "earliest"}).json()["events"] == []
    assert client.get("/queues/range").json()["ready"] == 0


# Nesting


def test_data_nested_to_the_limit_is_published_and_read_back(
    client: httpx.Client, ws: WebSocketSession
) -> None:
    data = nested(DEPTH_LIMIT - 1)  # inside {"data": ...}, the body is DEPTH_LIMIT levels deep
    before = latest(client, "deep")
    published = post(client, "/topics/deep/events", f'{{"data":{data}}}')
    assert published.status_code == 201, published.text
    page = client.get("/topics/deep/events", params={"after": before})
    assert f'"data":{data},' in page.text  # too deep for Python's own parser to check
    assert post(client, "/queues/deep/messages", f'{{"data":{data}}}').status_code == 201
    ws.send_text(f'{{"op":"publish","ref":"d","topic":"deep","data":{data}}}')
    assert ws.receive_text(timeout=10).startswith('{"op":"published","ref":"d",')


JSON_ROUTES = [
    ("POST", "/topics/deep/events"),
    ("POST", "/queues/deep/messages"),
    ("POST", "/queues/deep/messages/1/ack"),
    ("POST", "/queues/deep/messages/1/nack"),
    ("POST", "/queues/deep/messages/1/extend"),
    ("PUT", "/admin/captures/public.nope"),
]


@pytest.mark.parametrize(("method", "path"), JSON_ROUTES)
def test_deeper_bodies_are_invalid_json_on_every_route(
    client: httpx.Client, method: str, path: str
) -> None:
    body = f'{{"data":{nested(DEPTH_LIMIT)},"lease":"x"}}'
    answer = client.request(method, path, content=body.encode(), headers=JSON)
    assert answer.status_code == 400, answer.text
    assert answer.json() == {
        "error": "invalid_json",
        "message": "the body is nested deeper than 1024 levels",
    }
    at_limit = client.request(method, path, content=nested(DEPTH_LIMIT).encode(), headers=JSON)
    assert at_limit.json()["error"] != "invalid_json"


OPS = ("subscribe", "unsubscribe", "publish", "ping", "consume", "ack", "nack", "extend", "auth")


@pytest.mark.parametrize("op", OPS)
def test_deeper_frames_are_invalid_json_for_every_op(ws: WebSocketSession, op: str) -> None:
    ws.send_text(f'{{"op":"{op}","id":1,"data":{nested(DEPTH_LIMIT)}}}')
    assert receive(ws) == {
        "op": "error",
        "code": "invalid_json",
        "message": "the frame is nested deeper than 1024 levels",
    }
    assert_alive(ws)


# NUL characters


NUL_BODIES = [
    ("/topics/nul/events", '{"data":{"a":"x\\u0000y"}}', {}, "the string at $.data.a "),
    ("/topics/nul/events", '{"data":{"k\\u0000":1}}', {}, "a key of $.data "),
    ("/topics/nul/events", '{"data":1,"type":"t\\u0000"}', {}, "the string at $.type "),
    ("/topics/nul/events", '[{"data":1},{"data":["\\u0000"]}]', {}, "the string at $[1].data[0] "),
    (
        "/topics/nul/events",
        '{"data":"\\u0000"}',
        {"Idempotency-Key": "nul-1"},
        "the string at $.data ",
    ),
    ("/queues/nul/messages", '{"data":"\\u0000"}', {}, "the string at $.data "),
    ("/queues/nul/messages", '{"data":1,"key":"k\\u0000"}', {}, "the string at $.key "),
    (
        "/queues/nul/messages",
        '[{"data":1},{"data":{"\\u0000":2}}]',
        {"Idempotency-Key": "nul-2"},
        "a key of $[1].data ",
    ),
    ("/queues/nul/messages/999/ack", '{"lease":"\\u0000"}', {}, "the string at $.lease "),
    (
        "/queues/nul/messages/999/nack",
        '{"lease":"l","error":"x\\u0000y"}',
        {},
        "the string at $.error ",
    ),
    (
        "/queues/nul/messages/999/extend",
        '{"lease":"\\u0000","seconds":5}',
        {},
        "the string at $.lease ",
    ),
    ("/admin/captures/public.nope", '{"topic":"\\u0000"}', {}, "the string at $.topic "),
]


@pytest.mark.parametrize(("path", "body", "headers", "where"), NUL_BODIES)
def test_a_nul_is_refused_naming_where_and_nothing_is_written(
    client: httpx.Client, path: str, body: str, headers: dict[str, str], where: str
) -> None:
    method = "PUT" if path.startswith("/admin") else "POST"
    answer = client.request(method, path, content=body.encode(), headers={**JSON, **headers})
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"] == "invalid_event"
    assert answer.json()["message"].startswith(where)
    assert "DETAIL" not in answer.text
    assert client.get("/topics/nul/events", params={"after": "earliest"}).json()["events"] == []
    assert client.get("/queues/nul").json()["ready"] == 0


def test_a_nul_in_a_frame_is_an_error_frame_echoing_the_request(
    client: httpx.Client, ws: WebSocketSession
) -> None:
    ws.send_text('{"op":"publish","ref":7,"topic":"nul","data":{"a":"\\u0000"}}')
    refused = receive(ws)
    assert (refused["op"], refused["ref"], refused["code"]) == ("error", 7, "invalid_event")
    assert refused["message"].startswith("the string at $.data.a ")

    assert post(client, "/queues/nulws/messages", '{"data":1}').status_code == 201
    ws.send_text('{"op":"consume","id":"c","queue":"nulws"}')
    assert receive(ws) == {"op": "subscribed", "id": "c"}
    message = receive(ws)
    ws.send_text(json.dumps({"op": "nack", "message": message["id"], "error": "x\x00y"}))
    refused = receive(ws)
    assert (refused["op"], refused["message_id"], refused["code"]) == (
        "error",
        message["id"],
        "invalid_event",
    )
    ws.send_text(json.dumps({"op": "nack", "message": message["id"], "error": "x"}))
    assert receive(ws)["op"] == "nacked"
    ws.send_text('{"op":"unsubscribe","id":"c"}')
    assert receive(ws) == {"op": "unsubscribed", "id": "c"}
    assert client.get("/topics/nul/events", params={"after": "earliest"}).json()["events"] == []


# Token expiry


FAR_EXPIRIES = (2**70, 10**18, MAX_EXPIRY + 1)


def test_a_far_future_expiry_is_a_401_over_http_and_websocket() -> None:
    with auth_server() as server, httpx.Client(base_url=server.url, timeout=10) as client:
        ws_url = server.url.replace("http", "ws", 1) + "/ws"
        for exp in FAR_EXPIRIES:
            far = sign_claims({"sub": "far", "exp": exp, "pgcast": {"subscribe": [">"]}})
            for answer in (
                client.post("/auth/cookie", headers=bearer(far)),
                client.post("/auth/cookie", json={"token": far}),
            ):
                assert answer.status_code == 401, answer.text
                assert (
                    answer.json()["message"] == "the token's expiry ('exp') is past the year 9999"
                )
                assert "set-cookie" not in answer.headers
            with (
                pytest.raises(WebSocketUpgradeError) as refused,
                connect_ws(f"{ws_url}?token={far}", client),
            ):
                pass
            assert refused.value.response.status_code == 401
            with connect_ws(ws_url, client, session_class=WebSocketSession) as session:
                session.send_text(json.dumps({"op": "auth", "token": far}))
                assert receive(session)["code"] == "unauthorized"

        last = sign_claims({"sub": "last", "exp": MAX_EXPIRY, "pgcast": {"subscribe": [">"]}})
        stored = client.post("/auth/cookie", headers=bearer(last))
        assert stored.json() == {"sub": "last", "expires": "9999-12-31T23:59:59.000000Z"}
        client.cookies.clear()  # so the socket below opens without credentials
        with connect_ws(ws_url, client, session_class=WebSocketSession) as session:
            session.send_text(json.dumps({"op": "auth", "token": last}))
            assert receive(session)["expires"] == "9999-12-31T23:59:59.000000Z"
            assert_alive(session)
