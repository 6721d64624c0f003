"""The hub and the subscription switch-over against an in-memory log: no database needed.

The same code runs on PostgreSQL in engine_test and interleavings_test; here the log is
`backend/testing/memory_log.py`, so these tests run in milliseconds and can push the
fan-out, overflow and catch-up paths much harder.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager

import anyio
import anyio.lowlevel
import pytest

from backend.core.errors import CursorExpired
from backend.core.names import Pattern
from backend.entities.event import Event, format_id
from backend.services import hub as hub_module
from backend.services.hub import Hub
from backend.services.subscribe import EARLIEST, Subscription, open_subscription
from backend.testing.engine import take
from backend.testing.memory_log import MemoryLog

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def running_hub(log: MemoryLog, buffer_size: int = 1000) -> AsyncIterator[Hub]:
    hub = Hub(log, buffer_size=buffer_size, read_batch=100, poll_interval=5.0)
    async with anyio.create_task_group() as tg:
        await tg.start(hub.run)
        yield hub
        hub.close()
        tg.cancel_scope.cancel()


def publish(log: MemoryLog, hub: Hub, topic: str, count: int) -> list[Event]:
    """Append `count` events and wake the hub, as a publish's sequencer run does."""
    events = [log.append(topic, n) for n in range(count)]
    hub.wake(log.head)
    return events


async def test_every_subscriber_gets_its_events_from_one_read_per_wake_up() -> None:
    log = MemoryLog()
    async with (
        running_hub(log) as hub,
        open_subscription(hub, "orders.*") as (_, orders),
        open_subscription(hub, "orders.eu") as (_, eu),
        open_subscription(hub, "payments.>") as (_, payments),
    ):
        reads_before = log.reads
        sent_eu = publish(log, hub, "orders.eu", 5)
        sent_pay = publish(log, hub, "payments.card.ok", 3)
        assert [e.pos for e in await take(orders, 5)] == [e.pos for e in sent_eu]
        assert [e.pos for e in await take(eu, 5)] == [e.pos for e in sent_eu]
        assert [e.pos for e in await take(payments, 3)] == [e.pos for e in sent_pay]
        assert log.reads - reads_before <= 2  # two wake-ups, never one read per subscriber
        assert hub.stats.deliveries == 13


async def test_an_overflowing_subscriber_catches_up_from_the_log_without_gap_or_repeat() -> None:
    log = MemoryLog()
    async with (
        running_hub(log, buffer_size=5) as hub,
        open_subscription(hub, "t") as (_, slow),
        open_subscription(hub, "t") as (_, fast),
    ):
        sent: list[Event] = []
        for _ in range(10):
            sent += publish(log, hub, "t", 4)
            assert [e.pos for e in await take(fast, 4)] == [e.pos for e in sent[-4:]]
        assert hub.stats.overflows >= 1  # `slow` read nothing while 40 events went by
        assert [e.pos for e in await take(slow, 40)] == [e.pos for e in sent]
        more = publish(log, hub, "t", 3)  # and it is back on the live path
        assert [e.pos for e in await take(slow, 3)] == [e.pos for e in more]


async def test_switch_over_from_backlog_to_live_while_events_keep_coming() -> None:
    log = MemoryLog()
    async with running_hub(log, buffer_size=50) as hub:
        sent = publish(log, hub, "s", 300)
        await hub.wait_beyond(sent[-1].pos - 1)
        async with open_subscription(hub, "s", after=EARLIEST) as (_, stream):
            got: list[Event] = []
            for _ in range(20):
                sent += publish(log, hub, "s", 7)
                got += await take(stream, 20)
            got += await take(stream, len(sent) - len(got))
    assert [e.pos for e in got] == [e.pos for e in sent]


async def test_resume_points_that_are_gone_or_unknown_are_refused() -> None:
    log = MemoryLog()
    async with running_hub(log) as hub:
        publish(log, hub, "r", 10)
        log.prune(5)
        with pytest.raises(CursorExpired) as pruned:
            async with open_subscription(hub, "r", after=format_id(3)):
                pass
        with pytest.raises(CursorExpired) as unknown:
            async with open_subscription(hub, "r", after=format_id(99)):
                pass
        async with open_subscription(hub, "r", after=format_id(5)) as (_, stream):
            assert [e.pos for e in await take(stream, 5)] == [6, 7, 8, 9, 10]
    assert (pruned.value.reason, pruned.value.oldest) == ("pruned", format_id(6))
    assert unknown.value.reason == "unknown"


class Wire:
    """A client connection as a subscriber's sink sees it: what reached it, in order,
    whether the hub wrote it directly or the subscriber's task did."""

    def __init__(self) -> None:
        self.got: list[int] = []
        self.direct = 0
        self.accepts = True
        self.pulling = True

    def write(self, events: list[Event]) -> bool:
        if not self.accepts:
            return False
        self.got += [e.pos for e in events]
        self.direct += len(events)
        return True

    async def until(self, count: int) -> None:
        with anyio.fail_after(5):
            while len(self.got) < count:
                await anyio.sleep(0.001)


async def follow(stream: AsyncIterator[Event], wire: Wire) -> None:
    """The subscriber's own task: writes what the hub buffered, pulling only while
    `wire.pulling` (a client whose writes are stuck pulls nothing)."""
    while True:
        while not wire.pulling:
            await anyio.sleep(0.001)
        wire.got.append((await anext(stream)).pos)


async def test_the_hub_writes_to_an_idle_subscriber_directly_and_buffers_otherwise() -> None:
    log = MemoryLog()
    wire = Wire()
    async with (
        running_hub(log) as hub,
        open_subscription(hub, "d") as (subscription, stream),
        anyio.create_task_group() as tg,
    ):
        subscription.sink = wire.write
        tg.start_soon(follow, stream, wire)
        sent = publish(log, hub, "d", 1)
        await wire.until(1)
        sent += publish(log, hub, "d", 4)
        await wire.until(5)
        assert wire.direct == 5
        assert hub.stats.direct == 5
        wire.accepts = False  # the socket is backed up: the task takes over, in order
        sent += publish(log, hub, "d", 3)
        await wire.until(8)
        assert wire.direct == 5
        wire.accepts = True
        sent += publish(log, hub, "d", 2)
        await wire.until(10)
        assert wire.direct == 7
        tg.cancel_scope.cancel()
    assert wire.got == [e.pos for e in sent]


async def test_direct_writes_count_as_passed_when_a_lagging_subscriber_catches_up() -> None:
    log = MemoryLog()
    wire = Wire()
    async with (
        running_hub(log, buffer_size=3) as hub,
        open_subscription(hub, "o") as (subscription, stream),
        anyio.create_task_group() as tg,
    ):
        subscription.sink = wire.write
        tg.start_soon(follow, stream, wire)
        sent = publish(log, hub, "o", 2)
        await wire.until(2)
        wire.accepts = wire.pulling = False  # stuck, and four events do not fit in three
        sent += publish(log, hub, "o", 4)
        await hub.wait_beyond(sent[-1].pos - 1)
        assert hub.stats.overflows == 1
        wire.pulling = True  # reads them from the log, after what was written directly
        await wire.until(6)
        wire.accepts = True
        sent += publish(log, hub, "o", 2)  # and is back on the direct path
        await wire.until(8)
        assert wire.direct == 4
        tg.cancel_scope.cancel()
    assert wire.got == [e.pos for e in sent]


async def test_a_stopped_subscription_refuses_direct_writes() -> None:
    log = MemoryLog()
    wire = Wire()
    async with running_hub(log) as hub:
        subscription = Subscription(hub, (), None, hub.position, sink=wire.write)
        subscription.stop()
        assert not subscription._write_through(publish(log, hub, "x", 1))
    assert wire.got == []


async def test_a_subscriber_joining_during_a_sliced_fan_out_misses_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(hub_module, "DISPATCH_SLICE", 1)  # yield after every subscriber
    log = MemoryLog()
    first, second = Wire(), Wire()
    started = anyio.Event()

    def first_write(events: list[Event]) -> bool:
        started.set()
        return first.write(events)

    async with running_hub(log) as hub:
        before = hub.position
        async with (
            open_subscription(hub, "j") as (a, a_stream),
            open_subscription(hub, "j") as (b, b_stream),
            anyio.create_task_group() as tg,
        ):
            a.sink, b.sink = first_write, second.write
            tg.start_soon(follow, a_stream, first)
            tg.start_soon(follow, b_stream, second)
            await anyio.wait_all_tasks_blocked()
            sent = publish(log, hub, "j", 1)
            await started.wait()  # the hub is between two subscribers of this read
            joining = Subscription(hub, (Pattern.parse("j"),), None, before)
            joining.join_if_near()  # now, while the fan-out of `sent` is half done
            async with aclosing(joining.events()) as joined:
                sent += publish(log, hub, "j", 1)
                assert [e.pos for e in await take(joined, 2)] == [e.pos for e in sent]
            await first.until(2)
            await second.until(2)
            tg.cancel_scope.cancel()
    assert first.got == second.got == [e.pos for e in sent]


async def test_a_wake_up_for_events_already_read_costs_no_read() -> None:
    log = MemoryLog()
    async with running_hub(log) as hub:
        await anyio.wait_all_tasks_blocked()
        reads = log.reads
        sent = publish(log, hub, "n", 3)  # the local publish's wake-up
        await anyio.lowlevel.checkpoint()  # the hub is now inside its read
        hub.wake(sent[-1].pos)  # the same commit's NOTIFY, arriving during that read
        await hub.wait_beyond(sent[-1].pos - 1)
        await anyio.wait_all_tasks_blocked()
        assert log.reads - reads == 1
        hub.wake()  # a wake-up with no head always reads
        await anyio.wait_all_tasks_blocked()
        assert log.reads - reads == 2


async def test_events_handed_over_by_their_publisher_go_out_without_a_read() -> None:
    log = MemoryLog()
    async with running_hub(log) as hub, open_subscription(hub, "h") as (_, stream):
        await anyio.wait_all_tasks_blocked()
        reads = log.reads
        sent = [log.append("h", n) for n in range(3)]
        hub.hand_over(sent)
        assert [e.pos for e in await take(stream, 3)] == [e.pos for e in sent]
        assert log.reads == reads
        assert hub.stats.handed == 3


async def test_handed_over_events_that_are_not_next_are_read_from_the_log_once() -> None:
    log = MemoryLog()
    async with running_hub(log) as hub, open_subscription(hub, "h") as (_, stream):
        await anyio.wait_all_tasks_blocked()
        reads = log.reads
        other = log.append("h", "committed elsewhere first")  # its wake-up is still on the way
        mine = [log.append("h", n) for n in range(2)]
        hub.hand_over(mine)
        got = await take(stream, 3)
        hub.hand_over(mine)  # late, and already read: nothing happens
        await anyio.wait_all_tasks_blocked()
        assert [e.pos for e in got] == [other.pos] + [e.pos for e in mine]
        assert log.reads - reads == 1
        assert hub.stats.handed == 0
        assert hub.stats.deliveries == 3


async def test_a_sequencer_runs_own_wake_up_waits_for_its_hand_over() -> None:
    """The run's notification arrives before its answer: held, so nothing is read back."""
    log = MemoryLog()
    async with running_hub(log) as hub, open_subscription(hub, "t") as (_, events):
        reads = log.reads
        with hub.expecting_hand_over():
            stamped = [log.append("t", n) for n in range(3)]
            hub.wake(log.head, ours=True)
            for _ in range(20):  # room for the hub to read, were it woken
                await anyio.lowlevel.checkpoint()
            assert log.reads == reads
            hub.hand_over(stamped)
        got = await take(events, 3)
        assert log.reads == reads
    assert [e.pos for e in got] == [e.pos for e in stamped]


async def test_a_batch_handed_over_before_the_one_ahead_of_it_waits_for_it() -> None:
    """Two overlapping statements of this process, the later one handed over first: the
    hub waits for the earlier one rather than read both back, and keeps the order."""
    log = MemoryLog()
    async with running_hub(log) as hub, open_subscription(hub, "t") as (_, events):
        reads = log.reads
        with hub.expecting_hand_over():
            first = [log.append("t", n) for n in range(2)]
            with hub.expecting_hand_over():
                second = [log.append("t", n) for n in range(2, 4)]
                hub.hand_over(second)
            for _ in range(20):  # room for the hub to read, were it to
                await anyio.lowlevel.checkpoint()
            assert log.reads == reads
            hub.hand_over(first)
        got = await take(events, 4)
        assert log.reads == reads
    assert [e.pos for e in got] == [e.pos for e in first + second]


async def test_a_head_another_process_announced_is_read_during_a_run() -> None:
    """Only this process's own notifications wait for its statements in flight."""
    log = MemoryLog()
    async with running_hub(log) as hub, open_subscription(hub, "t") as (_, events):
        with hub.expecting_hand_over():
            theirs = log.append("t", 1)
            hub.wake(log.head)
            with anyio.fail_after(1):
                (got,) = await take(events, 1)
    assert got.pos == theirs.pos


async def test_a_cancelled_run_releases_held_wake_ups() -> None:
    """The run committed and announced its head, then was cancelled before handing over:
    its events are read once it has ended."""
    log = MemoryLog()
    async with running_hub(log) as hub, open_subscription(hub, "t") as (_, events):
        with anyio.CancelScope() as scope, hub.expecting_hand_over():
            stamped = log.append("t", 1)
            hub.wake(log.head, ours=True)
            scope.cancel()
            await anyio.sleep(1)
        with anyio.fail_after(1):  # woken at once, not by the 5 s poll
            (got,) = await take(events, 1)
    assert got.pos == stamped.pos


async def test_a_publish_during_a_sequencer_run_goes_out_at_once() -> None:
    log = MemoryLog()
    async with running_hub(log) as hub, open_subscription(hub, "t") as (_, events):
        with hub.expecting_hand_over():
            published = [log.append("t", 1)]  # an HTTP publish of this process
            hub.hand_over(published)
            with anyio.fail_after(1):
                (got,) = await take(events, 1)
    assert got.pos == published[0].pos


async def test_the_hubs_tables_are_those_that_grow_with_its_subscribers() -> None:
    async with running_hub(MemoryLog()) as hub:
        regs = [hub.register([Pattern(f"t.{n}")], None) for n in range(3)]
        tables = list(hub.tables())
        for reg in regs:
            assert any(isinstance(table, set) and reg in table for table in tables[1:])
            assert reg in tables[0]  # every subscriber on the live path
        for reg in regs:
            hub.unregister(reg)
        assert not any(table for table in hub.tables())
