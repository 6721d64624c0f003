"""Who may do what: every route and every WebSocket op against every kind of token.

Each cell asserts the exact answer (2xx, 401 or 403; for WebSocket ops the reply, an
`error` frame code, a 1008 close or a refused handshake), so no request reads or writes
where its token does not allow.

The matrix runs against the real app in this process (its engine on a real Postgres),
in about half the time it takes over sockets. A real server answers the rest: the
endless SSE responses, which the in-process transport cannot stream, and one row of
WebSocket handshakes through uvicorn's own upgrade and refusal.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import asyncpg
import httpx
import orjson
import pytest
from httpx_ws import AsyncWebSocketSession, WebSocketDisconnect, WebSocketUpgradeError, aconnect_ws
from pydantic import SecretStr

from backend.core.settings import Settings
from backend.testing import postgres
from backend.testing.in_process import app_client
from backend.testing.security import SECRET, WRONG_SECRET, bearer, token
from backend.testing.server import ServerProcess, spawn

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


async def create_table(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("CREATE TABLE public.matrix_t (id int PRIMARY KEY)")
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    """Module-wide, so that one app (and its engine) serves every in-process cell."""
    return "asyncio"


@pytest.fixture(scope="module")
async def app(anyio_backend: str) -> AsyncIterator[httpx.AsyncClient]:
    """The real app with AUTH_SECRET, in-process, on a database with a table to capture."""
    url = await postgres.clone_template()
    try:
        await create_table(url)
        async with app_client(Settings(auth_secret=SecretStr(SECRET)), url) as client:
            yield client
    finally:
        await postgres.drop(url)


@pytest.fixture(scope="module")
async def real_server(anyio_backend: str) -> AsyncIterator[ServerProcess]:
    """A real `pgcast serve` with AUTH_SECRET; started and stopped off the event loop."""
    url = await postgres.clone_template()
    try:
        await create_table(url)
        start = functools.partial(spawn, url, extra_env={"AUTH_SECRET": SECRET})
        process = await anyio.to_thread.run_sync(start)
        try:
            yield process
        finally:
            await anyio.to_thread.run_sync(process.stop)
            process.log_path.unlink(missing_ok=True)
    finally:
        await postgres.drop(url)


@pytest.fixture
async def real_client(real_server: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=real_server.url, timeout=10) as client:
        yield client


async def root_call(client: httpx.AsyncClient, method: str, path: str, **kwargs: Any) -> Any:
    response = await client.request(method, path, headers=bearer(ROOT), **kwargs)
    assert response.is_success, response.text
    return response.json()


async def leased(client: httpx.AsyncClient, queue: str = "jobs") -> tuple[str, str]:
    """A fresh message on `queue`, claimed with the root token: (id, lease)."""
    await root_call(client, "POST", f"/queues/{queue}/messages", json={"data": 1})
    claimed = await root_call(client, "GET", f"/queues/{queue}/messages", params={"limit": 1})
    (message,) = claimed["messages"]
    return message["id"], message["lease"]


async def dead(client: httpx.AsyncClient) -> str:
    """A dead-lettered message on `jobs` (other ready messages get acked on the way)."""
    body = {"data": 1, "max_attempts": 1}
    (ours,) = (await root_call(client, "POST", "/queues/jobs/messages", json=body))["messages"]
    claimed = await root_call(client, "GET", "/queues/jobs/messages", params={"limit": 100})
    for message in claimed["messages"]:
        settle = "nack" if message["id"] == ours["id"] else "ack"
        path = f"/queues/jobs/messages/{message['id']}/{settle}"
        await root_call(client, "POST", path, json={"lease": message["lease"]})
    return str(ours["id"])


Setup = Callable[[httpx.AsyncClient], Awaitable[dict[str, Any]]]


def settle(kind: str, extra: dict[str, Any]) -> Setup:
    async def setup(client: httpx.AsyncClient) -> dict[str, Any]:
        message_id, lease = await leased(client)
        return {
            "path": f"/queues/jobs/messages/{message_id}/{kind}",
            "json": {"lease": lease, **extra},
        }

    return setup


async def requeue_one(client: httpx.AsyncClient) -> dict[str, Any]:
    return {"path": f"/queues/jobs/dead/{await dead(client)}/requeue"}


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
    "enqueue": Cell("POST", "/queues/orders.q/messages", {"publisher": 201}, {"json": {"data": 1}}),
    "enqueue jobs": Cell("POST", "/queues/jobs/messages", {}, {"json": {"data": 1}}),
    "claim": Cell("GET", "/queues/jobs/messages", {"consumer": 200}),
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


# Endless responses: only a real server sends their head while the body goes on.
STREAM_CELLS = {
    "read SSE": Cell("GET", "/topics/orders.created/events", {"subscriber": 200}, {"headers": SSE}),
    "consume SSE": Cell("GET", "/queues/jobs/messages", {"consumer": 200}, {"headers": SSE}),
}


async def check_route(client: httpx.AsyncClient, cell: Cell, role: str) -> None:
    """The status of `cell` for `role`, and the JSON error and challenge when refused."""
    call: dict[str, Any] = {"path": cell.path, **cell.kwargs}
    if cell.setup is not None:
        call.update(await cell.setup(client))
    path = call.pop("path")
    headers = {**call.pop("headers", {}), **bearer(ROLES[role])}
    async with client.stream(cell.method, path, headers=headers, **call) as response:
        status = response.status_code
        body = b"" if status < 400 else await response.aread()
    assert status == cell.expected(role), body
    if status in (401, 403):
        assert orjson.loads(body)["error"] == ("unauthorized" if status == 401 else "forbidden")
    if status == 401:
        assert response.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.integrated
@pytest.mark.anyio
@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("name", CELLS)
async def test_http_route(app: httpx.AsyncClient, name: str, role: str) -> None:
    await check_route(app, CELLS[name], role)


@pytest.mark.external
@pytest.mark.anyio
@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("name", STREAM_CELLS)
async def test_streaming_route(real_client: httpx.AsyncClient, name: str, role: str) -> None:
    await check_route(real_client, STREAM_CELLS[name], role)


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


def expected_answer(name: str, role: str) -> str:
    refused = {"none": "close 1008", "expired": "http 401", "forged": "http 401"}
    return refused.get(role, WS_OPS[name][1].get(role, "forbidden"))


def ws(client: httpx.AsyncClient, token_: str | None = None) -> Any:
    """A `pgcast.v1` WebSocket to the client's server, authenticated by header if given."""
    url = str(client.base_url.copy_with(scheme="ws", path="/ws"))
    return aconnect_ws(url, client, subprotocols=["pgcast.v1"], headers=bearer(token_))


async def send(session: AsyncWebSocketSession, frame: dict[str, Any]) -> None:
    await session.send_text(orjson.dumps(frame).decode())


async def receive(session: AsyncWebSocketSession) -> dict[str, Any]:
    frame: dict[str, Any] = orjson.loads(await session.receive_text(timeout=5))
    return frame


async def run_ws(client: httpx.AsyncClient, role: str, frames: list[dict[str, Any]]) -> str:
    """The answer to the last frame: its `op`, an error code, `close 1008` or `http 401`."""
    try:
        async with ws(client, ROLES[role]) as session:
            for frame in frames:
                await send(session, frame)
            try:
                answer = await receive(session)
            except WebSocketDisconnect as exc:
                return f"close {exc.code}"
    except WebSocketUpgradeError as exc:
        return f"http {exc.response.status_code}"
    return str(answer["code"] if answer["op"] == "error" else answer["op"])


@pytest.mark.integrated
@pytest.mark.anyio
@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("name", WS_OPS)
async def test_websocket_op(app: httpx.AsyncClient, name: str, role: str) -> None:
    assert await run_ws(app, role, WS_OPS[name][0]) == expected_answer(name, role)


@pytest.mark.external
@pytest.mark.anyio
@pytest.mark.parametrize("role", ROLES)
async def test_websocket_handshake_through_uvicorn(
    real_client: httpx.AsyncClient, role: str
) -> None:
    frames = WS_OPS["subscribe"][0]
    assert await run_ws(real_client, role, frames) == expected_answer("subscribe", role)


@pytest.mark.integrated
@pytest.mark.anyio
async def test_a_consumer_settles_only_what_it_holds_on_its_queues(
    app: httpx.AsyncClient,
) -> None:
    for _ in range(3):
        await root_call(app, "POST", "/queues/ws-jobs/messages", json={"data": 1})
    async with ws(app, token("wscon", consume=["ws-jobs"])) as session:
        await send(session, {"op": "consume", "id": "c", "queue": "ws-jobs", "prefetch": 3})
        frames = [await receive(session) for _ in range(4)]
        ids = [f["id"] for f in frames if f["op"] == "message"]
        answers = []
        for op, extra in (("ack", {}), ("nack", {"delay": 30}), ("extend", {"seconds": 5})):
            await send(session, {"op": op, "message": ids.pop(), **extra})
            answers.append((await receive(session))["op"])
        await send(session, {"op": "ack", "message": "999999"})
        unknown = await receive(session)
    assert answers == ["acked", "nacked", "extended"]
    assert unknown["code"] == "unknown_message"


@pytest.mark.integrated
@pytest.mark.anyio
async def test_the_auth_frame_authenticates_with_the_token_grants(
    app: httpx.AsyncClient,
) -> None:
    answers = []
    for role in ("subscriber", "expired", "forged"):
        async with ws(app) as session:
            await send(session, {"op": "auth", "token": ROLES[role]})
            answer = await receive(session)
            answers.append(answer.get("code", answer["op"]))
            if answer["op"] == "authed":
                assert answer["sub"] == "sub"
                for topic in ("orders.*", "payments.*"):
                    await send(session, {"op": "subscribe", "id": topic, "topic": topic})
                    reply = await receive(session)
                    answers.append(reply.get("code", reply["op"]))
    assert answers == ["authed", "subscribed", "forbidden", "unauthorized", "unauthorized"]
