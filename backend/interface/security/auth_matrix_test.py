"""Who may do what: every route and every WebSocket op against every kind of token.

Each cell asserts the exact answer (2xx, 401 or 403; for WebSocket ops the reply, an
`error` frame code, a 1008 close or a refused handshake), so no request reads or writes
where its token does not allow.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from httpx_ws import WebSocketDisconnect, WebSocketSession, WebSocketUpgradeError, connect_ws

from backend.testing.security import WRONG_SECRET, auth_server, bearer, token
from backend.testing.server import ServerProcess

pytestmark = [pytest.mark.external]

ROLES = {
    "none": None,
    "publisher": token("pub", publish=["orders.*"]),
    "subscriber": token("sub", subscribe=["orders.>"]),
    "consumer": token("con", consume=["jobs"]),
    "admin": token("adm", admin=True),
    "expired": token("old", ttl=-30, publish=[">"], subscribe=[">"], consume=[">"], admin=True),
    "forged": token(
        "eve", secret=WRONG_SECRET, publish=[">"], subscribe=[">"], consume=[">"], admin=True
    ),
}
ROOT = token("root", publish=[">"], subscribe=[">"], consume=[">"], admin=True)
UNAUTHENTICATED = {"none", "expired", "forged"}
SSE = {"Accept": "text/event-stream"}


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with auth_server() as process:

        async def create_table() -> None:
            conn = await asyncpg.connect(process.database_url)
            try:
                await conn.execute("CREATE TABLE public.matrix_t (id int PRIMARY KEY)")
            finally:
                await conn.close()

        asyncio.run(create_table())
        yield process


def root_call(server: ServerProcess, method: str, path: str, **kwargs: Any) -> Any:
    response = httpx.request(method, server.url + path, headers=bearer(ROOT), **kwargs)
    assert response.is_success, response.text
    return response.json()


def leased(server: ServerProcess, queue: str = "jobs") -> tuple[str, str]:
    """A fresh message on `queue`, claimed with the root token: (id, lease)."""
    root_call(server, "POST", f"/queues/{queue}/messages", json={"data": 1})
    (message,) = root_call(server, "GET", f"/queues/{queue}/messages", params={"limit": 1})[
        "messages"
    ]
    return message["id"], message["lease"]


def dead(server: ServerProcess) -> str:
    """A dead-lettered message on `jobs` (other ready messages get acked on the way)."""
    body = {"data": 1, "max_attempts": 1}
    (ours,) = root_call(server, "POST", "/queues/jobs/messages", json=body)["messages"]
    claimed = root_call(server, "GET", "/queues/jobs/messages", params={"limit": 100})
    for message in claimed["messages"]:
        settle = "nack" if message["id"] == ours["id"] else "ack"
        path = f"/queues/jobs/messages/{message['id']}/{settle}"
        root_call(server, "POST", path, json={"lease": message["lease"]})
    return str(ours["id"])


Setup = Callable[[ServerProcess], dict[str, Any]]


def settle(kind: str, extra: dict[str, Any]) -> Setup:
    def setup(server: ServerProcess) -> dict[str, Any]:
        message_id, lease = leased(server)
        return {
            "path": f"/queues/jobs/messages/{message_id}/{kind}",
            "json": {"lease": lease, **extra},
        }

    return setup


def requeue_one(server: ServerProcess) -> dict[str, Any]:
    return {"path": f"/queues/jobs/dead/{dead(server)}/requeue"}


@dataclass(frozen=True)
class Cell:
    """One route: which roles get which success status (everyone else 401 or 403)."""

    method: str
    path: str
    allowed: dict[str, int]
    kwargs: dict[str, Any] = field(default_factory=dict)
    setup: Setup | None = None
    public: bool = False

    def expected(self, role: str) -> int:
        if role in self.allowed:
            return self.allowed[role]
        if self.public:
            return next(iter(self.allowed.values()))
        return 401 if role in UNAUTHENTICATED else 403


ADMIN_OR_CONSUMER = {"consumer": 200, "admin": 200}
ALL_VALID = {r: 200 for r in ROLES if r not in UNAUTHENTICATED}
CELLS = {
    "publish": Cell(
        "POST", "/topics/orders.created/events", {"publisher": 201}, {"json": {"data": 1}}
    ),
    "publish elsewhere": Cell("POST", "/topics/payments.x/events", {}, {"json": {"data": 1}}),
    "read topic": Cell("GET", "/topics/orders.created/events", {"subscriber": 200}),
    "read pattern": Cell("GET", "/topics/orders.%3E/events", {"subscriber": 200}),
    "read everything": Cell("GET", "/topics/%3E/events", {}),
    "read two patterns": Cell(
        "GET",
        "/events",
        {"subscriber": 200},
        {"params": [("topic", "orders.*"), ("topic", "orders.eu.>")]},
    ),
    "read one uncovered": Cell(
        "GET", "/events", {}, {"params": [("topic", "orders.*"), ("topic", "payments.*")]}
    ),
    "read SSE": Cell("GET", "/topics/orders.created/events", {"subscriber": 200}, {"headers": SSE}),
    "enqueue": Cell("POST", "/queues/orders.q/messages", {"publisher": 201}, {"json": {"data": 1}}),
    "enqueue jobs": Cell("POST", "/queues/jobs/messages", {}, {"json": {"data": 1}}),
    "claim": Cell("GET", "/queues/jobs/messages", {"consumer": 200}),
    "consume SSE": Cell("GET", "/queues/jobs/messages", {"consumer": 200}, {"headers": SSE}),
    "ack": Cell("POST", "", {"consumer": 200}, setup=settle("ack", {})),
    "nack": Cell("POST", "", {"consumer": 200}, setup=settle("nack", {"delay_seconds": 60})),
    "extend": Cell("POST", "", {"consumer": 200}, setup=settle("extend", {"seconds": 30})),
    "dead letters": Cell("GET", "/queues/jobs/dead", ADMIN_OR_CONSUMER),
    "requeue all": Cell("POST", "/queues/jobs/dead/requeue", ADMIN_OR_CONSUMER),
    "requeue one": Cell("POST", "", ADMIN_OR_CONSUMER, setup=requeue_one),
    "queue stats": Cell("GET", "/queues/jobs", ADMIN_OR_CONSUMER),
    "all queue stats": Cell("GET", "/queues", {"admin": 200}),
    "list captures": Cell("GET", "/admin/captures", {"admin": 200}),
    "add capture": Cell("PUT", "/admin/captures/public.matrix_t", {"admin": 200}),
    "remove capture": Cell("DELETE", "/admin/captures/public.matrix_t", {"admin": 200}),
    "metrics": Cell("GET", "/metrics", {"admin": 200}),
    "healthz": Cell("GET", "/healthz", {"none": 200}, public=True),
    "readyz": Cell("GET", "/readyz", {"none": 200}, public=True),
    "page": Cell("GET", "/", {"none": 200}, public=True),
    "static": Cell("GET", "/static/pgcast.js", {"none": 200}, public=True),
    "cookie": Cell("POST", "/auth/cookie", ALL_VALID),
    "forget cookie": Cell("DELETE", "/auth/cookie", {"none": 204}, public=True),
}


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("name", CELLS)
def test_http_route(server: ServerProcess, name: str, role: str) -> None:
    cell = CELLS[name]
    call: dict[str, Any] = {"path": cell.path, **cell.kwargs}
    if cell.setup is not None:
        call.update(cell.setup(server))
    path = call.pop("path")
    headers = {**call.pop("headers", {}), **bearer(ROLES[role])}
    with (
        httpx.Client(base_url=server.url, timeout=10) as client,
        client.stream(cell.method, path, headers=headers, **call) as response,
    ):
        status = response.status_code
        body = b"" if status < 400 else response.read()
    assert status == cell.expected(role), body
    if status in (401, 403):
        assert orjson.loads(body)["error"] == ("unauthorized" if status == 401 else "forbidden")
    if status == 401:
        assert response.headers["www-authenticate"].startswith("Bearer")


AUTHED = ("publisher", "subscriber", "consumer", "admin")
# WebSocket ops: the frames to send, and the answer per authenticated role ("forbidden"
# for roles not listed). Settling what a consumer really holds is tested below.
WS_OPS: dict[str, tuple[list[dict[str, Any]], dict[str, str]]] = {
    "subscribe": (
        [{"op": "subscribe", "id": 1, "topic": "orders.>"}],
        {"subscriber": "subscribed"},
    ),
    "subscribe wider": ([{"op": "subscribe", "id": 1, "topic": ">"}], {}),
    "publish": (
        [{"op": "publish", "ref": 1, "topic": "orders.created", "data": 1}],
        {"publisher": "published"},
    ),
    "publish elsewhere": ([{"op": "publish", "ref": 1, "topic": "x", "data": 1}], {}),
    "consume": ([{"op": "consume", "id": 1, "queue": "jobs"}], {"consumer": "subscribed"}),
    "consume elsewhere": ([{"op": "consume", "id": 1, "queue": "other"}], {}),
    "ack": ([{"op": "ack", "message": "1"}], {"consumer": "unknown_message"}),
    "nack": ([{"op": "nack", "message": "1"}], {"consumer": "unknown_message"}),
    "extend": ([{"op": "extend", "message": "1", "seconds": 5}], {"consumer": "unknown_message"}),
    "ping": ([{"op": "ping"}], dict.fromkeys(AUTHED, "pong")),
    "unsubscribe": ([{"op": "unsubscribe", "id": 9}], dict.fromkeys(AUTHED, "unknown_id")),
}


def ws_url(server: ServerProcess) -> str:
    return server.url.replace("http", "ws", 1) + "/ws"


def receive(ws: WebSocketSession) -> dict[str, Any]:
    frame: dict[str, Any] = orjson.loads(ws.receive_text(timeout=5))
    return frame


def run_ws(server: ServerProcess, role: str, frames: list[dict[str, Any]]) -> str:
    """The answer to the last frame: its `op`, an error code, `close 1008` or `http 401`."""
    try:
        with (
            httpx.Client() as client,
            connect_ws(
                ws_url(server),
                client,
                subprotocols=["pgcast.v1"],
                headers=bearer(ROLES[role]),
                session_class=WebSocketSession,
            ) as ws,
        ):
            for frame in frames:
                ws.send_text(orjson.dumps(frame).decode())
            answer = receive(ws)
    except WebSocketUpgradeError as exc:
        return f"http {exc.response.status_code}"
    except WebSocketDisconnect as exc:
        return f"close {exc.code}"
    return str(answer["code"] if answer["op"] == "error" else answer["op"])


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("name", WS_OPS)
def test_websocket_op(server: ServerProcess, name: str, role: str) -> None:
    frames, answers = WS_OPS[name]
    expected = {"none": "close 1008", "expired": "http 401", "forged": "http 401"}.get(
        role, answers.get(role, "forbidden")
    )
    assert run_ws(server, role, frames) == expected


def test_a_consumer_settles_only_what_it_holds_on_its_queues(server: ServerProcess) -> None:
    for _ in range(3):
        root_call(server, "POST", "/queues/ws-jobs/messages", json={"data": 1})
    consumer = token("wscon", consume=["ws-jobs"])
    with (
        httpx.Client() as client,
        connect_ws(
            ws_url(server),
            client,
            subprotocols=["pgcast.v1"],
            headers=bearer(consumer),
            session_class=WebSocketSession,
        ) as ws,
    ):
        ws.send_text(
            orjson.dumps({"op": "consume", "id": "c", "queue": "ws-jobs", "prefetch": 3}).decode()
        )
        frames = [receive(ws) for _ in range(4)]
        ids = [f["id"] for f in frames if f["op"] == "message"]
        answers = []
        for op, extra in (("ack", {}), ("nack", {"delay": 30}), ("extend", {"seconds": 5})):
            ws.send_text(orjson.dumps({"op": op, "message": ids.pop(), **extra}).decode())
            answers.append(receive(ws)["op"])
        ws.send_text(orjson.dumps({"op": "ack", "message": "999999"}).decode())
        unknown = receive(ws)
    assert answers == ["acked", "nacked", "extended"]
    assert unknown["code"] == "unknown_message"


def test_the_auth_frame_authenticates_with_the_token_grants(server: ServerProcess) -> None:
    answers = []
    for role in ("subscriber", "expired", "forged"):
        with (
            httpx.Client() as client,
            connect_ws(
                ws_url(server), client, subprotocols=["pgcast.v1"], session_class=WebSocketSession
            ) as ws,
        ):
            ws.send_text(orjson.dumps({"op": "auth", "token": ROLES[role]}).decode())
            answer = receive(ws)
            answers.append(answer.get("code", answer["op"]))
            if answer["op"] == "authed":
                assert answer["sub"] == "sub"
                for topic in ("orders.*", "payments.*"):
                    ws.send_text(
                        orjson.dumps({"op": "subscribe", "id": topic, "topic": topic}).decode()
                    )
                    reply = receive(ws)
                    answers.append(reply.get("code", reply["op"]))
    assert answers == ["authed", "subscribed", "forbidden", "unauthorized", "unauthorized"]
