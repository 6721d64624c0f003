"""The subscription session shared by SSE and WebSocket: farewells, resets, ending."""

from __future__ import annotations

import time
from contextlib import aclosing

import anyio
import pytest

from backend.core.errors import CursorExpired
from backend.core.names import parse_patterns
from backend.entities.event import Event, format_id
from backend.interface.stream.session import (
    OPENED,
    Farewell,
    Session,
    farewell_due,
    until_farewell,
)
from backend.testing.engine import running_engine

pytestmark = pytest.mark.anyio


async def test_shutdown_ends_the_wait_before_the_token_expires() -> None:
    stopping = anyio.Event()

    async def shut_down() -> None:
        await anyio.sleep(0.05)
        stopping.set()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(shut_down)
            farewell = await until_farewell(stopping, time.time() + 60)
    assert farewell is Farewell.SHUTDOWN


async def test_expiry_ends_the_wait_no_earlier_than_the_wall_clock_says() -> None:
    expires_at = time.time() + 0.2
    with anyio.fail_after(5):
        farewell = await until_farewell(anyio.Event(), expires_at)
    assert farewell is Farewell.EXPIRED
    assert time.time() >= expires_at


async def test_without_expiry_only_shutdown_ends_the_wait() -> None:
    stopping = anyio.Event()
    with anyio.move_on_after(0.2):
        await until_farewell(stopping, None)
        pytest.fail("the wait ended with no shutdown and no expiry")
    assert farewell_due(stopping, None) is None
    stopping.set()
    with anyio.fail_after(5):
        assert await until_farewell(stopping, None) is Farewell.SHUTDOWN


def test_an_expired_token_takes_precedence_over_a_shutdown() -> None:
    stopping = anyio.Event()
    stopping.set()
    assert farewell_due(stopping, time.time() - 1) is Farewell.EXPIRED
    assert farewell_due(stopping, time.time() + 60) is Farewell.SHUTDOWN


@pytest.mark.integrated
async def test_a_gone_resume_point_resets_in_band_and_ending_stops_the_items(
    database_url: str,
) -> None:
    async with running_engine(database_url) as engine:
        published = [await engine.publish("s", n) for n in range(2)]
        session = Session(engine, parse_patterns(["s"]), format_id(10**12), None)
        with anyio.fail_after(10):
            async with aclosing(session.items()) as items:
                opened = await anext(items)
                reset = await anext(items)
                batch: list[Event] = []
                while len(batch) < len(published):  # the hub may not have read both yet
                    more = await anext(items)
                    assert isinstance(more, list)
                    batch += more
                session.end(Farewell.EXPIRED)
                session.end(Farewell.SHUTDOWN)
                rest = [item async for item in items]
    assert opened is OPENED
    assert isinstance(reset, CursorExpired)
    assert reset.reason == "unknown"
    assert [e.id for e in batch] == [e.id for e in published]
    assert rest == []
    assert session.farewell is Farewell.EXPIRED


@pytest.mark.integrated
async def test_a_resumed_session_carries_on_after_its_park_without_a_second_opened(
    database_url: str,
) -> None:
    """What the WebSocket transport relies on: with `resume` set, `items` ends whenever its
    subscription parks, and the next `items` takes up from there; an ending of the
    session while parked resumes it once more, to finish."""
    direct: list[int] = []
    accepting = True
    resumes = 0

    def resume() -> None:
        nonlocal resumes
        resumes += 1

    async def resumed(count: int) -> None:
        while resumes < count:
            await anyio.sleep(0.01)

    def sink(events: list[Event]) -> bool:
        if accepting:
            direct.extend(e.pos for e in events)
        return accepting

    async with running_engine(database_url) as engine:
        session = Session(engine, parse_patterns(["park"]), "latest", None, sink=sink)
        session.resume = resume
        with anyio.fail_after(10):
            first_run = [item async for item in session.items()]
            assert (first_run, session.parked) == ([OPENED], True)
            written = await engine.publish("park", 1)
            while not direct:
                await anyio.sleep(0.01)
            accepting = False
            refused = await engine.publish("park", 2)
            await resumed(1)
            second_run = [item async for item in session.items()]
            assert session.parked
            session.end(Farewell.SHUTDOWN)
            await resumed(2)
            last_run = [item async for item in session.items()]
    assert direct == [written.pos]
    assert [[e.pos for e in b] for b in second_run if isinstance(b, list)] == [[refused.pos]]
    assert len(second_run) == 1
    assert (last_run, session.parked, resumes) == ([], False, 2)
    assert engine.hub.subscribers == 0
