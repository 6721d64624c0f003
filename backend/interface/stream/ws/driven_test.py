"""Driven WebSockets (driven.py) on pgcast's own protocols, in this process so that its
tasks can be counted: an idle socket keeps no task, frames that arrive still get their
answers in order, events still reach it, and a socket that ends gives everything back.
Also how the process's shared task group for socket work holds up (tasks.py), and the
task-per-socket path other servers use."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import httpx
import orjson
import pytest
import uvicorn
from httpx_ws import WebSocketDisconnect, aconnect_ws
from httpx_ws.transport import ASGIWebSocketTransport
from uvicorn.server import ServerState

from backend.connectors.embedded import free_port
from backend.core import exactjson
from backend.core.settings import Settings
from backend.interface.server.app import create_app
from backend.interface.server.lifecycle import Lifecycle
from backend.interface.server.protocols import WS_PROTOCOL, HttpProtocol, WebSocketProtocol
from backend.interface.server.state import AppState
from backend.testing.in_process import BASE_URL
from backend.testing.raw_websocket import CLOSE, TEXT, RawSocket, raw_socket

pytestmark = pytest.mark.integrated

SOCKETS = 20
SPARE_TASKS = 2  # room for a task of the engine's that happens to run just then


@contextlib.asynccontextmanager
async def serving(database_url: str) -> AsyncIterator[tuple[str, AppState, ServerState]]:
    """The app served by plain `uvicorn.Server` with pgcast's protocols, as `serve --reload`
    and anyone embedding `WebSocketProtocol` run it (none of `pgcast serve`'s setup)."""
    app = create_app(Settings(), database_url=database_url)
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=free_port(),
        http=HttpProtocol,
        ws=WebSocketProtocol,
        lifespan="on",
        log_config=None,
    )
    server = uvicorn.Server(config)
    serve = asyncio.ensure_future(server.serve())
    try:
        with anyio.fail_after(10):
            while not server.started:
                await asyncio.sleep(0.02)
        yield f"http://127.0.0.1:{config.port}", app.state.pgcast, server.server_state
    finally:
        server.should_exit = True
        await serve


async def until(condition: Callable[[], bool]) -> None:
    with anyio.fail_after(10):
        while not condition():
            await anyio.sleep(0.01)


async def exchange(socket: RawSocket, **frame: Any) -> dict[str, Any]:
    await socket.send(TEXT, orjson.dumps(frame))
    _, payload = await socket.frame()
    answer: dict[str, Any] = exactjson.loads(payload)
    return answer


def test_idle_sockets_keep_no_task_and_still_answer_and_deliver(database_url: str) -> None:
    asyncio.run(idle_sockets_keep_no_task(database_url))  # as uvicorn runs: no anyio runner


async def idle_sockets_keep_no_task(database_url: str) -> None:
    async with (
        serving(database_url) as (url, state, server_state),
        contextlib.AsyncExitStack() as stack,
    ):
        await anyio.sleep(0.2)  # the engine's tasks have started
        baseline = len(asyncio.all_tasks())
        sockets = [await stack.enter_async_context(raw_socket(url)) for _ in range(SOCKETS)]
        for n, socket in enumerate(sockets):
            assert (await exchange(socket, op="subscribe", id=n, topic="d"))["op"] == "subscribed"
        await until(lambda: len(asyncio.all_tasks()) <= baseline + SPARE_TASKS)
        assert not server_state.tasks  # uvicorn's task per socket has ended too

        for socket in sockets:
            await socket.send(TEXT, b'{"op":"ping"}')
            await socket.send(TEXT, b'{"op":"nonsense"}')
        for socket in sockets:
            answers = [exactjson.loads((await socket.frame())[1]) for _ in range(2)]
            assert [a["op"] for a in answers] == ["pong", "error"], answers

        async with httpx.AsyncClient(base_url=url) as client:
            published = await client.post("/topics/d/events", json={"data": {"n": 1}})
        assert published.status_code == 201, published.text
        for n, socket in enumerate(sockets):
            frame = exactjson.loads((await socket.frame())[1])
            assert (frame["op"], frame["sub"], frame["data"]) == ("event", n, {"n": 1})
        await until(lambda: len(asyncio.all_tasks()) <= baseline + SPARE_TASKS)
        protocols = [p for p in server_state.connections if isinstance(p, WebSocketProtocol)]
        assert len(protocols) == SOCKETS

        assert (state.guard.slots.used, state.lifecycle.open_streams) == (SOCKETS, SOCKETS)
        await stack.aclose()
        await until(lambda: state.guard.slots.used == 0)
        assert state.lifecycle.open_streams == 0
        assert state.engine.hub.subscribers == 0
        assert all(WS_PROTOCOL not in p.scope for p in protocols)
        await until(lambda: len(asyncio.all_tasks()) <= baseline + SPARE_TASKS)


def test_a_task_cancelled_from_outside_its_socket_leaves_the_server_serving(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Socket tasks share the process's task group: a cancellation that comes from
    neither the socket nor the group must not cancel the group (every socket) or reach the
    app's lifespan (the engine)."""
    asyncio.run(stray_cancellation(database_url))
    assert "a WebSocket task was cancelled from outside its socket" in caplog.text


async def stray_cancellation(database_url: str) -> None:
    async def cancelled_by_a_library() -> None:
        raise asyncio.CancelledError

    async with serving(database_url) as (url, state, _):
        assert state.ws.tasks.start(cancelled_by_a_library)
        await anyio.sleep(0.1)
        async with raw_socket(url) as socket:
            assert (await exchange(socket, op="ping")) == {"op": "pong"}
        async with raw_socket(url) as socket:  # one of a socket's own tasks: it ends that socket
            assert (await exchange(socket, op="ping")) == {"op": "pong"}
            await until(lambda: len(state.ws._sockets) == 1)  # the first one has closed
            (connection,) = state.ws._sockets
            assert connection.spawn(cancelled_by_a_library)
            with anyio.fail_after(5):
                opcode, payload = await socket.frame()
            assert (opcode, payload[:2]) == (CLOSE, (1011).to_bytes(2, "big"))
        async with httpx.AsyncClient(base_url=url) as client:
            published = await client.post("/topics/d/events", json={"data": 1})
        assert published.status_code == 201, published.text


@pytest.mark.anyio
async def test_under_another_server_a_socket_opened_during_shutdown_is_closed_with_1001(
    database_url: str,
) -> None:
    """Under servers other than pgcast's a task reads each socket (`endpoint._run`); the
    sweep ends a socket that opens once shutdown has begun before that task reads."""
    lifecycle = Lifecycle()
    app = create_app(Settings(), database_url=database_url, lifecycle=lifecycle)
    transport = ASGIWebSocketTransport(app, initial_receive_timeout=10)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url=BASE_URL) as client,
    ):
        lifecycle.begin_shutdown()
        connect: Any = aconnect_ws(f"{BASE_URL}/ws", client, subprotocols=["pgcast.v1"])
        async with connect as ws:
            with anyio.fail_after(5), pytest.raises(WebSocketDisconnect) as closed:
                await ws.receive_text()
    assert closed.value.code == 1001


def test_a_consumers_socket_keeps_its_reader_only_while_it_consumes(database_url: str) -> None:
    asyncio.run(reader_kept_while_consuming(database_url))


async def reader_kept_while_consuming(database_url: str) -> None:
    async with serving(database_url) as (url, state, _), raw_socket(url) as socket:
        await anyio.sleep(0.2)
        baseline = len(asyncio.all_tasks())
        assert (await exchange(socket, op="consume", id="c", queue="q"))["op"] == "subscribed"
        (connection,) = state.ws._sockets
        await anyio.sleep(0.1)
        assert connection.reading  # waits for the next ack instead of ending
        # The consumer ends by itself (as on a lost database): the reader ends with it.
        connection.subscriptions["c"].cancel()
        await until(lambda: not connection.reading and not connection.subscriptions)
        await until(lambda: len(asyncio.all_tasks()) <= baseline + SPARE_TASKS)
        assert (await exchange(socket, op="ping")) == {"op": "pong"}


@pytest.mark.anyio
async def test_a_subscription_asked_for_while_the_server_stops_is_refused(
    database_url: str,
) -> None:
    """Once the socket task group is closed (the app's lifespan is ending), nothing can
    serve a new subscription or consumer: the client hears so instead of waiting."""
    app = create_app(Settings(), database_url=database_url)
    transport = ASGIWebSocketTransport(app, initial_receive_timeout=10)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url=BASE_URL) as client,
    ):
        connect: Any = aconnect_ws(f"{BASE_URL}/ws", client, subprotocols=["pgcast.v1"])
        async with connect as ws:
            await ws.send_text('{"op":"ping"}')
            assert exactjson.loads(await ws.receive_text()) == {"op": "pong"}
            # What `SocketTasks.close` does first (the rest, cancelling the group, would
            # cancel this test: here the lifespan runs in the test's own task).
            app.state.pgcast.ws.tasks.open = False
            answers = []
            for frame in (
                '{"op":"subscribe","id":1,"topic":"t"}',
                '{"op":"consume","id":2,"queue":"q"}',
            ):
                await ws.send_text(frame)
                with anyio.fail_after(5):
                    answers.append(exactjson.loads(await ws.receive_text()))
    assert [(a["op"], a["id"], a["code"]) for a in answers] == [
        ("error", 1, "shutting_down"),
        ("error", 2, "shutting_down"),
    ]
