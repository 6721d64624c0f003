"""Parked WebSocket subscriptions against cancellation that arrives at the worst moment.

anyio delivers a cancellation to a task only at its next checkpoint, and not at all to a
task whose await has already completed (it retries on the next loop turn). A task that
`unsubscribe` or the end of its socket cancels in that window can still write, or reach
its park, without a checkpoint. These tests drive a real `Connection` and
`EventSubscription` over an in-memory log's hub, with a recording socket that accepts
direct writes as uvicorn's protocol does when it is not backed up.
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import anyio
import pytest
from anyio.abc import TaskGroup

from backend.connectors.store.log import Page
from backend.core.errors import DatabaseUnavailable
from backend.core.names import parse_patterns
from backend.entities.event import Event
from backend.interface.server.metrics import DirectTally
from backend.interface.stream.ws import direct
from backend.interface.stream.ws.connection import Connection
from backend.interface.stream.ws.ops import unsubscribe
from backend.interface.stream.ws.runners import EventSubscription
from backend.interface.stream.ws.tasks import SocketTasks
from backend.services.hub import Hub
from backend.services.hub_test import publish, running_hub
from backend.services.subscribe import start_subscription
from backend.testing.memory_log import MemoryLog

pytestmark = pytest.mark.anyio


class RecordingSocket:
    """The socket as the connection writes to it; `send_text` completes at once."""

    def __init__(self) -> None:
        self.scope: dict[str, Any] = {}
        self.frames: list[str] = []

    async def send_text(self, text: str) -> None:
        self.frames.append(text)

    def write_frames(self, frames: bytes) -> bool:
        self.frames.append("<direct>")
        return True

    def ops(self) -> list[str]:
        return [f.split('"op":"')[1].split('"')[0] if f.startswith("{") else f for f in self.frames]


class Metrics:
    def tally(self, _transport: str) -> DirectTally:
        return DirectTally()

    def delivered(self, _transport: str, _events: list[Event]) -> None:
        return None


class HubEngine:
    """What a session asks of the engine: a subscription on the hub."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    async def start_subscription(self, patterns: Any, after: Any, flt: Any) -> Any:
        return await start_subscription(self.hub, patterns, after, flt)


def subscribed(
    hub: Hub,
    socket: RecordingSocket,
    tasks: TaskGroup,
    after: str,
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[Connection, EventSubscription]:
    monkeypatch.setattr(direct, "frame_writer", lambda _scope: socket.write_frames)
    state = SimpleNamespace(engine=HubEngine(hub), metrics=Metrics())
    connection = Connection(socket, state, SocketTasks(tasks), principal=None)  # type: ignore[arg-type]
    sub = connection.subscriptions["s"] = EventSubscription(
        connection, "s", parse_patterns(["p"]), after, None
    )
    sub.start()
    return connection, sub


async def until(condition: Callable[[], bool]) -> None:
    with anyio.fail_after(5):
        while not condition():
            await anyio.sleep(0.001)


@pytest.mark.parametrize("how", ["unsubscribe", "socket end"])
async def test_a_task_cancelled_while_runnable_that_parks_still_leaves_the_hub(
    monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    log = MemoryLog()
    socket = RecordingSocket()
    async with running_hub(log) as hub, anyio.create_task_group() as tasks:
        connection, sub = subscribed(hub, socket, tasks, "latest", monkeypatch)
        await until(lambda: sub.session.parked)
        # Another write holds the socket: the hub's direct write is refused, the batch is
        # buffered and resumes the subscription, whose task queues for its turn.
        connection.writing = True
        publish(log, hub, "p", 1)
        await until(lambda: connection._turns is not None)
        # That write ends and hands the turn over; in the same loop turn, before any
        # checkpoint, the subscription is cancelled.
        connection._pass_turn()
        if how == "unsubscribe":
            await unsubscribe(connection, {"op": "unsubscribe", "id": "s"})
        else:
            connection.stop_subscriptions()
        await anyio.sleep(0.05)
        for _ in range(3):
            sent = publish(log, hub, "p", 1)
            await hub.wait_beyond(sent[-1].pos - 1)
        left = hub.subscribers
        tasks.cancel_scope.cancel()
    assert left == 0
    assert "event" not in socket.ops()[socket.ops().index("subscribed") + 1 :]


async def test_an_unsubscribed_parked_subscription_is_freed_without_the_cycle_collector(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    log = MemoryLog()
    socket = RecordingSocket()
    async with running_hub(log) as hub, anyio.create_task_group() as tasks:
        connection, sub = subscribed(hub, socket, tasks, "latest", monkeypatch)
        session = weakref.ref(sub.session)
        await until(lambda: bool((s := session()) and s.parked))
        gc.collect()
        gc.disable()
        try:
            await unsubscribe(connection, {"op": "unsubscribe", "id": "s"})
            del sub
            await anyio.sleep(0.01)
            alive = session() is not None
        finally:
            gc.enable()
        tasks.cancel_scope.cancel()
    assert hub.subscribers == 0
    assert not alive


class GatedLog(MemoryLog):
    """A log whose page reads answer only once `gate` is set; with `fails`, the answer is
    that the database went away."""

    def __init__(self, fails: bool = False) -> None:
        super().__init__()
        self.gate = anyio.Event()
        self.reading = False
        self.fails = fails

    async def read_page(self, *args: Any) -> Page:
        page = await super().read_page(*args)
        self.reading = True
        await self.gate.wait()
        if self.fails:
            raise DatabaseUnavailable("the database is unavailable: connection lost")
        return page


@pytest.mark.parametrize("fails", [False, True], ids=["events", "error"])
async def test_nothing_follows_unsubscribed_when_a_read_answers_as_it_comes(
    monkeypatch: pytest.MonkeyPatch, fails: bool
) -> None:
    log = GatedLog(fails)
    socket = RecordingSocket()
    async with running_hub(log) as hub, anyio.create_task_group() as tasks:
        publish(log, hub, "p", 3)
        await hub.wait_beyond(2)
        connection, _ = subscribed(hub, socket, tasks, "earliest", monkeypatch)
        await until(lambda: log.reading)  # catching up: the page read is in flight
        log.gate.set()  # the database answers, and in the same loop turn:
        await unsubscribe(connection, {"op": "unsubscribe", "id": "s"})
        await anyio.sleep(0.05)
        connection.stop_subscriptions()
        tasks.cancel_scope.cancel()
    ops = socket.ops()
    assert ops[ops.index("unsubscribed") + 1 :] == []
