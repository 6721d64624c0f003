"""Malformed input against a real server: never a 5xx, never a crash, never a partial write.

Hypothesis drives every HTTP route (odd methods, paths, query values, headers and
bodies: bad JSON, huge and very precise numbers, nesting around the 1,024 limit, NUL
characters, invalid UTF-8) and every WebSocket op (the same values, wrong types,
unknown fields, binary and non-JSON frames). The module's server must be
healthy afterwards and its log free of tracebacks (checked when the fixture ends).
Example counts are bounded so the file runs in well under a minute.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
import struct
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import quote

import anyio
import asyncpg
import httpx
import orjson
import pytest
from httpx_ws import WebSocketDisconnect, WebSocketSession, connect_ws
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backend.core import exactjson
from backend.testing import postgres
from backend.testing.json_documents import DEPTH_LIMIT, documents, nested
from backend.testing.server import ServerProcess, start_server

pytestmark = [pytest.mark.external]

FUZZ = settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)
DEEP = b"[" * 10_000 + b"]" * 10_000


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    url = anyio.run(postgres.clone_template)
    try:
        with start_server(url, extra_env={"MAX_BODY_BYTES": "262144"}) as process:
            yield process
            assert httpx.get(f"{process.url}/healthz", timeout=5).status_code == 200
            log = process.log()
            for sign in ("unexpected error", "Exception in ASGI application", "session failed"):
                assert sign not in log, log
    finally:
        anyio.run(postgres.drop, url)


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as session:
        yield session


ROUTES = [
    ("POST", "/topics/{}/events"),
    ("GET", "/topics/{}/events"),
    ("GET", "/events"),
    ("POST", "/queues/{}/messages"),
    ("GET", "/queues/{}/messages"),
    ("POST", "/queues/{}/messages/{}/ack"),
    ("POST", "/queues/{}/messages/{}/nack"),
    ("POST", "/queues/{}/messages/{}/extend"),
    ("GET", "/queues/{}/dead"),
    ("POST", "/queues/{}/dead/requeue"),
    ("POST", "/queues/{}/dead/{}/requeue"),
    ("GET", "/queues/{}"),
    ("GET", "/queues"),
    ("GET", "/admin/captures"),
    ("PUT", "/admin/captures/{}"),
    ("DELETE", "/admin/captures/{}"),
    ("POST", "/auth/cookie"),
    ("DELETE", "/auth/cookie"),
    ("GET", "/metrics"),
    ("GET", "/healthz"),
    ("GET", "/"),
]
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE", "FOO"]
NAMES = st.one_of(
    st.sampled_from(["fz", "fz.a", "fz.*", "fz.>", ">", "a..b", "1", "0" * 19, "public.none"]),
    st.text(max_size=300),
)
# `wait` only takes values that cannot hold a request open for long.
PARAMS = st.lists(
    st.tuples(
        st.sampled_from(["after", "limit", "filter", "topic", "lease", "prefetch", "token"]),
        st.one_of(NAMES, st.sampled_from(["earliest", "latest", "-1", "1e999", "nan", "9" * 40])),
    )
    | st.tuples(st.just("wait"), st.sampled_from(["-1", "abc", "0.01", "1e309", "nan", "inf"])),
    max_size=4,
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=50),
)
JSON = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
FIELD_NAMES = (
    "data",
    "type",
    "key",
    "delay_seconds",
    "max_attempts",
    "lease",
    "seconds",
    "error",
    "topic",
    "columns",
    "token",
)
FIELDS = st.sampled_from(FIELD_NAMES)
OBJECTS = st.dictionaries(FIELDS, JSON, max_size=5)
# JSON texts Python's encoder cannot write: exact numbers, NULs, nesting at the limit.
NUL_TEXT = st.builds(
    lambda a, b: json.dumps(f"{a}\x00{b}"), st.text(max_size=5), st.text(max_size=5)
)
RAW_VALUES = st.one_of(
    documents(),
    NUL_TEXT,
    st.sampled_from(
        [
            nested(DEPTH_LIMIT - 1),
            nested(DEPTH_LIMIT),
            nested(DEPTH_LIMIT + 1),
            '{"k\\u0000":1}',
            "18446744073709551616",
            "-99999999999999999999999999",
            "1e400",
            "0.1000000000000000000001",
            "-1E-400",
            "1e131072",
            "1e-16384",
        ]
    ),
)


def raw_object(fields: dict[str, str]) -> str:
    return "{" + ",".join(f"{json.dumps(name)}:{value}" for name, value in fields.items()) + "}"


RAW_OBJECTS = st.dictionaries(FIELDS, RAW_VALUES, max_size=4).map(raw_object)


def encode(value: Any) -> bytes:
    """JSON text of any value, integers beyond 64 bits included (orjson refuses those)."""
    return json.dumps(value).encode()


BODIES = st.one_of(
    st.none(),
    OBJECTS.map(encode),
    st.lists(OBJECTS, max_size=5).map(encode),
    JSON.map(encode),
    RAW_OBJECTS.map(str.encode),
    st.lists(RAW_OBJECTS, min_size=1, max_size=3).map(
        lambda items: f"[{','.join(items)}]".encode()
    ),
    RAW_VALUES.map(str.encode),
    st.binary(max_size=200),
    st.sampled_from(
        [
            DEEP,
            b'{"data": "\xff\xfe"}',
            b'{"data": 1e999}',
            b'{"data": 123456789012345678901234567890}',
            b'{"data": 1, "data": 2}',
            b"[" + b",".join([b'{"data":1}'] * 1001) + b"]",
            b'{"data": "' + b"x" * 300_000 + b'"}',
        ]
    ),
)
HEADER_TEXT = st.text(
    st.characters(min_codepoint=32, max_codepoint=255, exclude_characters="\x7f"), max_size=60
)
CONTENT_TYPES = st.sampled_from(
    [None, "application/json", "application/x+json; charset=utf-8", "text/plain", "json", ";;"]
)
HEADERS = st.fixed_dictionaries(
    {},
    optional={
        "Accept": st.sampled_from(["application/json", "text/event-stream", "*/*", "x"]),
        "Idempotency-Key": HEADER_TEXT,
        "Last-Event-ID": HEADER_TEXT,
        "Authorization": HEADER_TEXT,
        "Origin": HEADER_TEXT,
    },
)


def fill(template: str, values: list[str]) -> str:
    return template.format(*(quote(v, safe="") or "x" for v in values))


def assert_no_server_error(response: httpx.Response) -> None:
    assert response.status_code < 500, response.read()[:300]
    method = response.request.method
    json_error = response.headers.get("content-type") == "application/json"
    if response.status_code >= 400 and json_error and method != "HEAD":
        body = orjson.loads(response.read())
        assert set(body) >= {"error", "message"}


@FUZZ
@given(
    route=st.sampled_from(ROUTES),
    method=st.one_of(st.none(), st.sampled_from(METHODS)),
    names=st.lists(NAMES, min_size=2, max_size=2),
    params=PARAMS,
    body=BODIES,
    content_type=CONTENT_TYPES,
    headers=HEADERS,
)
def test_http_routes_never_fail_with_5xx(
    client: httpx.Client,
    route: tuple[str, str],
    method: str | None,
    names: list[str],
    params: Sequence[tuple[str, str]],
    body: bytes | None,
    content_type: str | None,
    headers: dict[str, str],
) -> None:
    path = fill(route[1], names)
    sent = [(name.encode(), value.strip().encode("latin-1")) for name, value in headers.items()]
    if content_type:
        sent.append((b"Content-Type", content_type.encode()))
    with client.stream(
        method or route[0], path, params=tuple(params), content=body, headers=sent
    ) as response:
        assert_no_server_error(response)


@pytest.mark.parametrize(
    "path",
    [
        "/topics/t/events",
        "/queues/q/messages",
        "/queues/q/messages/1/ack",
        "/admin/captures/public.t",
    ],
)
def test_deep_nesting_is_a_400_not_a_crash(client: httpx.Client, path: str) -> None:
    method = "PUT" if path.startswith("/admin") else "POST"
    response = client.request(
        method, path, content=DEEP, headers={"Content-Type": "application/json"}
    )
    assert (response.status_code, response.json()["error"]) == (400, "invalid_json")


OPS = ["subscribe", "unsubscribe", "publish", "ping", "consume", "ack", "nack", "extend", "auth"]
WS_FIELD_NAMES = (
    "id",
    "topic",
    "after",
    "filter",
    "ref",
    "data",
    "type",
    "key",
    "queue",
    "prefetch",
    "lease",
    "message",
    "delay",
    "error",
    "seconds",
    "token",
    "extra",
)
WS_FIELDS = st.sampled_from(WS_FIELD_NAMES)


# What each special value in any body field or frame field must get, on every route and op.
SPECIALS = {
    "nul": ('"x\\u0000y"', 400, "invalid_event"),
    "nul_key": ('{"k\\u0000":1}', 400, "invalid_event"),
    "too_deep": (nested(DEPTH_LIMIT), 400, "invalid_json"),  # one level more inside the object
    "huge": ("18446744073709551616", None, None),
    "precise": ("0.1000000000000000000001", None, None),
    "beyond_double": ("1e400", None, None),
}
BODY_ROUTES = [
    ("POST", "/topics/fz.special/events"),
    ("POST", "/queues/fz.special/messages"),
    ("POST", "/queues/fz.special/messages/1/ack"),
    ("POST", "/queues/fz.special/messages/1/nack"),
    ("POST", "/queues/fz.special/messages/1/extend"),
    ("PUT", "/admin/captures/public.none"),
    ("POST", "/auth/cookie"),
]


@pytest.mark.parametrize(("method", "path"), BODY_ROUTES)
def test_nul_deep_and_huge_values_in_every_body_field(
    client: httpx.Client, method: str, path: str
) -> None:
    """Alone or beside a valid `data`, in an object or a batch: a 4xx, never a 5xx; NUL
    and too-deep values get their own codes wherever the route reads the body."""
    reads_body = path != "/auth/cookie"  # 404 first: authentication is off here
    for field in FIELD_NAMES:
        for value, status, code in SPECIALS.values():
            item = raw_object({"data": "1", field: value} if field != "data" else {field: value})
            for body in (item, f"[{item}]"):
                answer = client.request(
                    method,
                    path,
                    content=body.encode(),
                    headers={"Content-Type": "application/json"},
                )
                assert answer.status_code < 500, (field, body[:80], answer.text)
                if status is not None and reads_body:
                    assert (answer.status_code, answer.json()["error"]) == (status, code), (
                        field,
                        body[:80],
                        answer.text,
                    )


@pytest.mark.parametrize("op", OPS)
def test_nul_deep_and_huge_values_in_every_frame_field(server: ServerProcess, op: str) -> None:
    """An error frame with the right code, or the op's answer; the socket stays open."""
    url = server.url.replace("http", "ws", 1) + "/ws"
    with (
        httpx.Client() as http,
        connect_ws(url, http, subprotocols=["pgcast.v1"], session_class=WebSocketSession) as ws,
    ):
        for field in WS_FIELD_NAMES:
            for value, _, code in SPECIALS.values():
                ws.send_text(raw_object({"op": json.dumps(op), field: value}))
                ws.send_text('{"op":"ping"}')
                answers: list[dict[str, Any]] = []
                while not answers or answers[-1].get("op") != "pong":
                    answers.append(exactjson.loads(ws.receive_text(timeout=5), allow_nul=True))
                first = answers[0]
                assert first.get("code") != "internal", (field, value[:40], first)
                if code is not None:
                    assert (first["op"], first["code"]) == ("error", code), (field, first)


async def _counts(url: str) -> tuple[int, int]:
    """Events and messages stored under the name `atomic` (only this test writes there)."""
    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM pgcast.events WHERE topic = 'atomic') AS events,"
            " (SELECT count(*) FROM pgcast.queue_messages WHERE queue = 'atomic') AS messages"
        )
        assert row is not None
        return row["events"], row["messages"]
    finally:
        await conn.close()


BAD_ITEMS = st.one_of(
    st.just({}),
    st.just({"data": 1, "extra": 1}),
    st.builds(
        lambda t: {"data": 1, "type": t},
        st.one_of(st.just(""), st.integers(), st.text(min_size=201)),
    ),
    st.builds(lambda k: {"data": 1, "key": k}, st.one_of(st.just(""), st.lists(st.integers()))),
    st.just({"data": "x" * 2_000_000}),
    st.just({"data": 1, "max_attempts": 0}),
    st.just({"data": 1, "delay_seconds": -1}),
    st.just([1]),
    st.just("text"),
)


@settings(max_examples=40, deadline=None, database=None)
@given(
    good=st.lists(st.fixed_dictionaries({"data": JSON}), min_size=1, max_size=5),
    bad=BAD_ITEMS,
    where=st.integers(min_value=0, max_value=5),
    route=st.sampled_from(["/topics/atomic/events", "/queues/atomic/messages"]),
)
def test_a_batch_with_one_bad_item_stores_nothing(
    server: ServerProcess,
    client: httpx.Client,
    good: list[dict[str, Any]],
    bad: Any,
    where: int,
    route: str,
) -> None:
    if "topics" in route and isinstance(bad, dict) and set(bad) & {"max_attempts", "delay_seconds"}:
        bad = {"data": 1, "extra": 1}  # fields that are only wrong for messages
    batch = [*good[:where], bad, *good[where:]]
    before = asyncio.run(_counts(server.database_url))
    response = client.post(
        route, content=encode(batch), headers={"Content-Type": "application/json"}
    )
    assert 400 <= response.status_code < 500, response.text
    assert asyncio.run(_counts(server.database_url)) == before


FRAMES = st.one_of(
    st.builds(
        lambda op, fields: encode({"op": op, **fields}).decode(),
        st.sampled_from(OPS),
        st.dictionaries(WS_FIELDS, st.one_of(JSON, NAMES), max_size=5),
    ),
    st.builds(
        lambda op, fields: raw_object({"op": json.dumps(op), **fields}),
        st.sampled_from(OPS),
        st.dictionaries(WS_FIELDS, RAW_VALUES, max_size=4),
    ),
    JSON.map(lambda value: encode(value).decode()),
    st.text(max_size=100),
    st.binary(max_size=100),
    st.just(DEEP.decode()),
)


@FUZZ
@given(frames=st.lists(FRAMES, min_size=1, max_size=3))
def test_websocket_ops_never_fail_internally(
    server: ServerProcess, frames: list[str | bytes]
) -> None:
    url = server.url.replace("http", "ws", 1) + "/ws"
    with (
        httpx.Client() as http,
        connect_ws(url, http, subprotocols=["pgcast.v1"], session_class=WebSocketSession) as ws,
    ):
        for frame in frames:
            if isinstance(frame, bytes):
                ws.send_bytes(frame)
            else:
                ws.send_text(frame)
        ws.send_text('{"op":"ping"}')
        while True:
            try:
                answer = exactjson.loads(ws.receive_text(timeout=5), allow_nul=True)
            except WebSocketDisconnect as exc:
                closed = exc
                break
            assert answer.get("code") != "internal", answer
            if answer["op"] == "pong":
                return
    assert closed.code not in (1011, 1006), closed


def _raw(server: ServerProcess, request: bytes) -> bytes:
    """The response head, or nothing when the server waits (a short body) or hangs up."""
    chunks = []
    with socket.create_connection(("127.0.0.1", server.port), timeout=2) as sock:
        sock.sendall(request)
        with contextlib.suppress(TimeoutError):
            while chunk := sock.recv(65536):
                chunks.append(chunk)
                if b"\r\n\r\n" in b"".join(chunks):
                    break
    return b"".join(chunks)


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /topics/\xff\xfe/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        b"GET /events?topic=%ff%fe HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        b"GET /events?topic=a HTTP/1.1\r\nHost: 127.0.0.1\r\nLast-Event-ID: \xff\xfe\r\n\r\n",
        b"POST /topics/a/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b'Content-Length: 5\r\n\r\n{"da',
        b"POST /topics/a/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: -1\r\n\r\n",
        b"GET\x00 / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        b"GET / HTTP/1.0\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n",
    ],
)
def test_malformed_http_gets_a_client_error(server: ServerProcess, request_bytes: bytes) -> None:
    head = _raw(server, request_bytes)
    if head:  # the server may also just hang up on garbage
        status = int(head.split(b" ", 2)[1])
        assert status < 500, head[:200]


def test_invalid_utf8_text_frame_closes_with_1007(server: ServerProcess) -> None:
    key = base64.b64encode(os.urandom(16))
    handshake = (
        b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    payload = b"\xff\xfe\xfd"
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(handshake)
        assert sock.recv(4096).startswith(b"HTTP/1.1 101")
        sock.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + masked)
        frame = sock.recv(4096)
    assert frame[0] == 0x88  # a close frame
    assert struct.unpack("!H", frame[2:4])[0] == 1007


MANY_PATTERNS = [("topic", f"many.*.{n}.>") for n in range(1000)]


@pytest.mark.parametrize(
    "params",
    [
        [("pattern", f"many.*.{n}") for n in range(1000)],
        [("pattern", ".".join(["*"] * 500))],
        [("pattern", "many." * 2000 + ">")],
    ],
    ids=["repeated", "deep wildcard", "long"],
)
def test_topic_listings_with_many_or_huge_patterns_get_a_client_answer(
    client: httpx.Client, params: list[tuple[str, str]]
) -> None:
    assert_no_server_error(client.get("/topics", params=tuple(params)))


def test_websocket_patterns_one_per_subscription_and_capped_per_socket(
    server: ServerProcess,
) -> None:
    """A WebSocket subscription holds one pattern: a list of them is an error frame, and the
    socket's subscriptions (so its patterns) stop at MAX_SUBSCRIPTIONS."""
    url = server.url.replace("http", "ws", 1) + "/ws"
    with (
        httpx.Client() as http,
        connect_ws(url, http, subprotocols=["pgcast.v1"], session_class=WebSocketSession) as ws,
    ):
        patterns = [pattern for _, pattern in MANY_PATTERNS]
        ws.send_text(orjson.dumps({"op": "subscribe", "id": "list", "topic": patterns}).decode())
        refused = exactjson.loads(ws.receive_text(timeout=5))
        assert (refused["op"], refused["id"]) == ("error", "list")
        codes = []
        for n in range(101):
            frame = {"op": "subscribe", "id": n, "topic": f"many.*.{n}.>"}
            ws.send_text(orjson.dumps(frame).decode())
            codes.append(exactjson.loads(ws.receive_text(timeout=5)).get("code"))
    assert codes[:100] == [None] * 100
    assert codes[100] == "too_many_subscriptions"
