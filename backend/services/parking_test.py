"""Parked subscriptions: idle on the live path, a subscription whose transport can resume
it holds no task; the hub writes through its sink, and whatever wakes its buffer (a
refused batch, an overflow, `stop`, the hub closing) calls `resume` once, after which
`batches` carries on with nothing lost, repeated or reordered."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import aclosing

import anyio
import pytest
from anyio.abc import TaskGroup

from backend.entities.event import Event
from backend.services.hub import Hub
from backend.services.hub_test import Wire, publish, running_hub
from backend.services.subscribe import Subscription, start_subscription
from backend.testing.memory_log import MemoryLog

pytestmark = pytest.mark.anyio


class Transport:
    """Serves one subscription as the WebSocket transport does: a task per resume, which
    writes what `batches` gives to the wire and ends when the subscription parks."""

    def __init__(self, subscription: Subscription, wire: Wire, tasks: TaskGroup) -> None:
        self.subscription = subscription
        self.wire = wire
        self.tasks = tasks
        self.resumes = 0
        self.held = False
        """While True, a resume is noted but its task waits (a busy loop, a slow start)."""
        self.release = anyio.Event()
        self.runs_ended = 0
        self.last_run_parked: bool | None = None
        subscription.sink = wire.write
        subscription.resume = self.resume

    def resume(self) -> None:
        self.resumes += 1
        self.tasks.start_soon(self.run)

    async def run(self) -> None:
        if self.held:
            await self.release.wait()
        async with aclosing(self.subscription.batches()) as batches:
            async for batch in batches:
                self.wire.got += [e.pos for e in batch]
        self.last_run_parked = self.subscription.parked
        self.runs_ended += 1


async def parked_subscription(hub: Hub, wire: Wire, tasks: TaskGroup) -> Transport:
    subscription = await start_subscription(hub, "p")
    transport = Transport(subscription, wire, tasks)
    await transport.run()
    assert transport.last_run_parked
    return transport


async def until(condition: Callable[[], bool]) -> None:
    with anyio.fail_after(5):
        while not condition():
            await anyio.sleep(0.001)


async def test_an_idle_subscription_parks_and_the_hub_writes_through_its_sink() -> None:
    log = MemoryLog()
    wire = Wire()
    async with running_hub(log) as hub, anyio.create_task_group() as tasks:
        transport = await parked_subscription(hub, wire, tasks)
        sent = publish(log, hub, "p", 3)
        sent += publish(log, hub, "p", 2)
        await wire.until(5)
        assert wire.got == [e.pos for e in sent]
        assert (wire.direct, transport.resumes, hub.subscribers) == (5, 0, 1)
        transport.subscription.close()
        assert hub.subscribers == 0


async def test_a_refused_batch_resumes_the_subscription_which_parks_again() -> None:
    log = MemoryLog()
    wire = Wire()
    async with running_hub(log) as hub, anyio.create_task_group() as tasks:
        transport = await parked_subscription(hub, wire, tasks)
        sent = publish(log, hub, "p", 2)
        await wire.until(2)
        wire.accepts = False  # the socket is backed up
        sent += publish(log, hub, "p", 3)
        sent += publish(log, hub, "p", 1)
        await wire.until(6)
        await until(lambda: transport.runs_ended == 2)
        assert (transport.resumes, transport.last_run_parked) == (1, True)
        wire.accepts = True
        sent += publish(log, hub, "p", 2)
        await wire.until(8)
        assert wire.got == [e.pos for e in sent]
        assert (wire.direct, transport.resumes) == (4, 1)
        transport.subscription.close()


async def test_a_parked_subscription_that_overflows_catches_up_from_the_log() -> None:
    log = MemoryLog()
    wire = Wire()
    async with running_hub(log, buffer_size=3) as hub, anyio.create_task_group() as tasks:
        transport = await parked_subscription(hub, wire, tasks)
        wire.accepts = False
        transport.held = True  # its task is slow to start: the buffer overflows
        sent: list[Event] = []
        for _ in range(4):
            sent += publish(log, hub, "p", 2)
            await hub.wait_beyond(sent[-1].pos - 1)
        assert hub.stats.overflows == 1
        assert transport.resumes == 1
        transport.release.set()
        await wire.until(8)
        await until(lambda: transport.runs_ended == 2)
        assert transport.last_run_parked  # back on the live path, idle
        wire.accepts = True
        sent += publish(log, hub, "p", 1)
        await wire.until(9)
        assert wire.got == [e.pos for e in sent]
        assert hub.subscribers == 1
        transport.subscription.close()


async def test_stop_resumes_a_parked_subscription_which_then_ends_and_leaves() -> None:
    log = MemoryLog()
    wire = Wire()
    async with running_hub(log) as hub, anyio.create_task_group() as tasks:
        transport = await parked_subscription(hub, wire, tasks)
        transport.subscription.stop()
        await until(lambda: transport.runs_ended == 2)
        assert (transport.resumes, transport.last_run_parked) == (1, False)
        assert hub.subscribers == 0
        publish(log, hub, "p", 2)
        await anyio.sleep(0.05)
        assert wire.got == []


async def test_closing_a_parked_subscription_leaves_the_hub_without_resuming_it() -> None:
    log = MemoryLog()
    wire = Wire()
    async with running_hub(log) as hub, anyio.create_task_group() as tasks:
        transport = await parked_subscription(hub, wire, tasks)
        transport.subscription.close()
        assert (hub.subscribers, transport.subscription.parked) == (0, False)
        publish(log, hub, "p", 2)
        await anyio.sleep(0.05)
        assert (wire.got, transport.resumes) == ([], 0)


async def test_the_hub_closing_resumes_a_parked_subscription_which_then_ends() -> None:
    log = MemoryLog()
    wire = Wire()
    async with anyio.create_task_group() as tasks:
        async with running_hub(log) as hub:
            transport = await parked_subscription(hub, wire, tasks)
        await until(lambda: transport.runs_ended == 2)
        assert (transport.resumes, transport.last_run_parked) == (1, False)


async def test_a_resume_that_fails_closes_its_subscription_and_the_fan_out_goes_on() -> None:
    log = MemoryLog()
    wire = Wire()
    others = Wire()
    async with running_hub(log) as hub, anyio.create_task_group() as tasks:
        failing = await parked_subscription(hub, wire, tasks)
        healthy = await parked_subscription(hub, others, tasks)

        def broken() -> None:
            raise RuntimeError("no task can be started")

        failing.subscription.resume = broken
        wire.accepts = False
        sent = publish(log, hub, "p", 2)
        await others.until(2)
        assert others.got == [e.pos for e in sent]
        assert (hub.subscribers, failing.subscription.parked) == (1, False)
        healthy.subscription.close()


@pytest.mark.parametrize("ending", ["stop", "hub closing"])
async def test_what_a_refused_batch_left_buffered_is_written_before_the_end(ending: str) -> None:
    log = MemoryLog()
    wire = Wire()
    async with anyio.create_task_group() as tasks:
        async with running_hub(log) as hub:
            transport = await parked_subscription(hub, wire, tasks)
            wire.accepts = False
            transport.held = True  # its task has not started yet when the end comes
            sent = publish(log, hub, "p", 2)
            await hub.wait_beyond(sent[-1].pos - 1)
            assert transport.resumes == 1
            if ending == "stop":
                transport.subscription.stop()
        transport.release.set()
        await until(lambda: transport.runs_ended == 2)
    assert wire.got == [e.pos for e in sent]
    assert transport.last_run_parked is False
