from __future__ import annotations

import anyio
import pytest

from backend.interface.server.on_demand import PipelineOnDemand, WaitersOnDemand

pytestmark = pytest.mark.anyio


async def test_the_event_wakes_every_waiter_and_clears_like_an_asyncio_event() -> None:
    event = WaitersOnDemand()
    assert not event.is_set()
    woken: list[int] = []

    async def waiter(n: int) -> None:
        await event.wait()
        woken.append(n)

    async with anyio.create_task_group() as tg:
        for n in range(3):
            tg.start_soon(waiter, n)
        await anyio.wait_all_tasks_blocked()
        assert woken == []
        event.set()
    assert sorted(woken) == [0, 1, 2]
    await event.wait()  # set: returns at once
    event.clear()
    with anyio.move_on_after(0.05) as scope:
        await event.wait()
    assert scope.cancelled_caught


async def test_a_set_event_needs_no_waiters_deque() -> None:
    event = WaitersOnDemand()
    event.set()
    assert await event.wait()
    assert event._waiters == ()


def test_the_pipeline_is_first_in_first_out_like_uvicorns_deque() -> None:
    pipeline = PipelineOnDemand()
    assert not pipeline
    pipeline.appendleft("first")
    pipeline.appendleft("second")
    assert pipeline.pop() == "first"
    assert pipeline.pop() == "second"
    assert not pipeline
