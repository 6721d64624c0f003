"""Stream operators: output, timing, error types, and that every upstream gets closed.

Every test runs on asyncio and trio; on trio a generator left unclosed fails the test
through `filterwarnings = error`.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Callable, Iterable
from contextlib import AbstractAsyncContextManager, aclosing
from typing import Generic, TypeVar

import anyio
import anyio.lowlevel
import pytest

from backend.core.streams import (
    amap,
    batch,
    closing_iter,
    collapse_single,
    filter,
    heartbeat,
    map,
    merge,
    take,
    throttle,
)

T = TypeVar("T")

pytestmark = pytest.mark.anyio

LIMIT = 1.0
"""Upper bound on every test's run time, in seconds."""


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    backend: str = request.param
    return backend


class Source(Generic[T]):
    """A scripted upstream that records how far it got and whether its `finally` ran."""

    def __init__(
        self,
        items: Iterable[T],
        *,
        gaps: float | Iterable[float] = 0.0,
        error: Exception | None = None,
        hang: bool = False,
        async_cleanup: bool = False,
    ) -> None:
        self._items = items
        self._gaps = itertools.repeat(gaps) if isinstance(gaps, float) else iter(gaps)
        self._error = error
        self._hang = hang
        self._async_cleanup = async_cleanup
        self.started = False
        self.closed = False
        self.cleaned_up = False
        self.pulled = 0

    def __aiter__(self) -> AsyncIterator[T]:
        return self._run()

    async def _run(self) -> AsyncGenerator[T, None]:
        self.started = True
        try:
            for item, gap in zip(self._items, self._gaps, strict=False):
                if gap:
                    await anyio.sleep(gap)
                self.pulled += 1
                yield item
            if self._error is not None:
                raise self._error
            if self._hang:
                await anyio.sleep_forever()
        finally:
            self.closed = True
            if self._async_cleanup:
                await anyio.sleep(0.01)
                self.cleaned_up = True


class Unclosable:
    """An async iterator without `aclose`, which `closing_iter` must tolerate."""

    def __init__(self, count: int) -> None:
        self._left = count

    def __aiter__(self) -> Unclosable:
        return self

    async def __anext__(self) -> int:
        if self._left == 0:
            raise StopAsyncIteration
        self._left -= 1
        return self._left


async def collect(items: AsyncIterable[T]) -> list[T]:
    return [item async for item in items]


def doubled(x: int) -> int:
    return x * 2


async def tripled(x: int) -> int:
    await anyio.lowlevel.checkpoint()
    return x * 3


Stage = Callable[[AsyncIterable[int]], AbstractAsyncContextManager[AsyncIterator[object]]]

TIME_BASED: list[Stage] = [
    lambda s: batch(s, 2, 0.02),
    lambda s: merge(s),
    lambda s: throttle(s, 0.01),
    lambda s: heartbeat(s, 0.02, lambda: None),
]
TIME_BASED_IDS = ["batch", "merge", "throttle", "heartbeat"]


async def test_closing_iter_closes_generators_and_accepts_plain_iterators() -> None:
    with anyio.fail_after(LIMIT):
        source = Source(range(5))
        async with closing_iter(source) as items:
            assert await anext(items) == 0
        assert source.closed
        async with closing_iter(Unclosable(3)) as plain:
            assert await collect(plain) == [2, 1, 0]


def test_collapse_single_unwraps_nested_one_member_groups() -> None:
    error = KeyError("k")
    assert collapse_single(BaseExceptionGroup("outer", [ExceptionGroup("inner", [error])])) is (
        error
    )
    several = ExceptionGroup("two", [KeyError("a"), ValueError("b")])
    assert collapse_single(ExceptionGroup("outer", [several])) is several


async def test_map_applies_a_plain_function() -> None:
    with anyio.fail_after(LIMIT):
        source = Source([1, 2, 3])
        async with aclosing(map(source, doubled)) as out:
            assert await collect(out) == [2, 4, 6]
        assert source.closed


async def test_amap_awaits_an_async_function_in_order() -> None:
    with anyio.fail_after(LIMIT):
        source = Source([1, 2, 3], gaps=0.001)
        async with aclosing(amap(source, tripled)) as out:
            assert await collect(out) == [3, 6, 9]
        assert source.closed


async def test_filter_keeps_matching_items() -> None:
    with anyio.fail_after(LIMIT):
        async with aclosing(filter(Source(range(10)), lambda x: x % 3 == 0)) as out:
            assert await collect(out) == [0, 3, 6, 9]


async def test_take_stops_after_n_without_reading_further() -> None:
    with anyio.fail_after(LIMIT):
        source = Source(itertools.count())
        async with aclosing(take(source, 3)) as out:
            assert await collect(out) == [0, 1, 2]
        assert source.pulled == 3
        assert source.closed


async def test_take_zero_never_starts_the_source() -> None:
    with anyio.fail_after(LIMIT):
        source = Source(itertools.count())
        async with aclosing(take(source, 0)) as out:
            assert await collect(out) == []
        assert not source.started


async def test_breaking_out_of_a_pure_chain_closes_the_innermost_source() -> None:
    with anyio.fail_after(LIMIT):
        source = Source(itertools.count(), hang=True)
        chain = take(filter(map(source, doubled), lambda x: x % 4 == 0), 100)
        async with aclosing(chain) as out:
            async for item in out:
                assert item == 0
                break
        assert source.closed


async def test_batch_groups_by_size_and_flushes_the_tail_at_the_end() -> None:
    with anyio.fail_after(LIMIT):
        source = Source(range(7))
        async with batch(source, 3, 0.5) as batches:
            assert await collect(batches) == [[0, 1, 2], [3, 4, 5], [6]]
        assert source.closed


async def test_batch_sends_a_partial_batch_after_max_wait() -> None:
    with anyio.fail_after(LIMIT):
        source = Source([0, 1], hang=True)
        started = anyio.current_time()
        async with batch(source, 10, 0.03) as batches:
            assert await batches.receive() == [0, 1]
            assert anyio.current_time() - started >= 0.025
        assert source.closed


async def test_batch_timer_starts_at_the_first_item_of_each_batch() -> None:
    with anyio.fail_after(LIMIT):
        source = Source([0, 1, 2, 3], gaps=[0.0, 0.0, 0.1, 0.005])
        async with batch(source, 10, 0.04) as batches:
            assert await collect(batches) == [[0, 1], [2, 3]]


async def test_merge_interleaves_items_as_they_arrive() -> None:
    with anyio.fail_after(LIMIT):
        a = Source(["a0", "a1", "a2"], gaps=[0.0, 0.06, 0.06])
        b = Source(["b0", "b1"], gaps=[0.03, 0.06])
        async with merge(a, b) as merged:
            assert await collect(merged) == ["a0", "b0", "a1", "b1", "a2"]
        assert a.closed
        assert b.closed


async def test_merge_ends_when_every_source_has_ended() -> None:
    with anyio.fail_after(LIMIT):
        a = Source(range(3), gaps=0.002)
        b = Source(range(10, 15))
        async with merge(a, b) as merged:
            items = await collect(merged)
        assert sorted(items) == [0, 1, 2, 10, 11, 12, 13, 14]
        assert [x for x in items if x < 10] == [0, 1, 2]
        assert [x for x in items if x >= 10] == [10, 11, 12, 13, 14]


async def test_merge_of_nothing_ends_at_once() -> None:
    with anyio.fail_after(LIMIT):
        nothing: tuple[Source[int], ...] = ()
        async with merge(*nothing) as merged:
            assert await collect(merged) == []


async def test_merge_raises_the_original_error_and_closes_every_source() -> None:
    with anyio.fail_after(LIMIT):
        failing = Source([1], gaps=0.01, error=ValueError("boom"))
        idle = Source([100], hang=True)
        seen: list[int] = []

        async def consume() -> None:
            async with merge(failing, idle) as merged:
                async for item in merged:
                    seen.append(item)

        with pytest.raises(ValueError, match="boom"):
            await consume()
        assert sorted(seen) == [1, 100]
        assert failing.closed
        assert idle.closed


async def test_throttle_coalesces_a_burst_to_its_latest_item() -> None:
    with anyio.fail_after(LIMIT):
        source = Source(range(6), gaps=[0.0, 0.01, 0.002, 0.002, 0.002, 0.002])
        async with throttle(source, 0.1) as throttled:
            first = await throttled.receive()
            first_at = anyio.current_time()
            second = await throttled.receive()
            assert anyio.current_time() - first_at >= 0.09
            assert await collect(throttled) == []
        assert (first, second) == (0, 5)


async def test_throttle_spaces_items_and_never_repeats_one() -> None:
    with anyio.fail_after(LIMIT):
        source = Source(range(20), gaps=0.01)
        times: list[float] = []
        items: list[int] = []
        async with throttle(source, 0.05) as throttled:
            async for item in throttled:
                times.append(anyio.current_time())
                items.append(item)
        assert items[-1] == 19
        assert items == sorted(set(items))
        assert 3 <= len(items) <= 7
        assert all(later - earlier >= 0.04 for earlier, later in itertools.pairwise(times))


async def test_throttle_keeps_reading_while_the_consumer_is_slow() -> None:
    with anyio.fail_after(LIMIT):
        source = Source(range(10), gaps=0.002, hang=True)
        async with throttle(source, 0.0) as throttled:
            assert await throttled.receive() == 0
            await anyio.sleep(0.1)
            assert source.pulled == 10
            assert await throttled.receive() == 9


async def test_heartbeat_inserts_beats_while_the_source_is_idle() -> None:
    with anyio.fail_after(LIMIT):
        source = Source(["a"], hang=True)
        beats = itertools.count(1)
        started = anyio.current_time()
        async with heartbeat(source, 0.03, lambda: f"beat-{next(beats)}") as out:
            assert [await out.receive() for _ in range(3)] == ["a", "beat-1", "beat-2"]
            assert anyio.current_time() - started >= 0.055
        assert source.closed


async def test_heartbeat_beats_between_slow_items_only() -> None:
    with anyio.fail_after(LIMIT):
        source = Source(["a", "b"], gaps=[0.0, 0.09])
        beats = itertools.count(1)
        async with heartbeat(source, 0.06, lambda: f"beat-{next(beats)}") as out:
            assert await collect(out) == ["a", "beat-1", "b"]


async def test_heartbeat_stays_silent_while_items_flow() -> None:
    with anyio.fail_after(LIMIT):
        source = Source(range(5), gaps=0.01)
        async with heartbeat(source, 0.08, lambda: "beat") as out:
            assert await collect(out) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("stage", TIME_BASED, ids=TIME_BASED_IDS)
async def test_leaving_early_closes_the_upstream_before_the_block_exits(stage: Stage) -> None:
    with anyio.fail_after(LIMIT):
        source = Source(itertools.count())
        async with stage(source) as out:
            async for _ in out:
                break
        assert source.closed


@pytest.mark.parametrize("stage", TIME_BASED, ids=TIME_BASED_IDS)
async def test_cancelling_the_consumer_cancels_producers_and_closes_upstream(
    stage: Stage,
) -> None:
    with anyio.fail_after(LIMIT):
        source = Source([1], hang=True)
        with anyio.move_on_after(0.05) as scope:
            async with stage(source) as out:
                async for _ in out:
                    pass
        assert scope.cancelled_caught
        assert source.closed


@pytest.mark.parametrize("stage", TIME_BASED, ids=TIME_BASED_IDS)
async def test_upstream_error_keeps_its_type(stage: Stage) -> None:
    with anyio.fail_after(LIMIT):
        source = Source([1, 2], error=LookupError("gone"))
        with pytest.raises(LookupError, match="gone") as caught:
            async with stage(source) as out:
                await collect(out)
        assert type(caught.value) is LookupError
        assert source.closed


@pytest.mark.parametrize("stage", TIME_BASED, ids=TIME_BASED_IDS)
async def test_consumer_error_keeps_its_type_and_closes_upstream(stage: Stage) -> None:
    with anyio.fail_after(LIMIT):
        source = Source(itertools.count())

        async def fail_inside() -> None:
            async with stage(source) as out:
                await anext(aiter(out))
                raise KeyError("consumer")

        with pytest.raises(KeyError) as caught:
            await fail_inside()
        assert type(caught.value) is KeyError
        assert source.closed


@pytest.mark.parametrize(
    ("stage", "bound"),
    [
        (lambda s: batch(s, 2, 0.5), 5),
        (lambda s: merge(s), 2),
        (lambda s: heartbeat(s, 0.5, lambda: None), 3),
    ],
    ids=["batch", "merge", "heartbeat"],
)
async def test_a_slow_consumer_holds_back_the_upstream(stage: Stage, bound: int) -> None:
    with anyio.fail_after(LIMIT):
        source = Source(itertools.count())
        async with stage(source) as out:
            await anext(aiter(out))
            await anyio.sleep(0.05)
            assert source.pulled == bound
        assert source.closed


async def test_cleanup_of_a_cancelled_stage_lets_the_upstream_await() -> None:
    with anyio.fail_after(LIMIT):
        source = Source(itertools.count(), async_cleanup=True)
        with anyio.move_on_after(0.05):
            async with merge(source) as merged:
                await merged.receive()
                await anyio.sleep_forever()
        assert source.closed
        assert source.cleaned_up


async def test_stages_compose_and_early_exit_closes_every_source() -> None:
    with anyio.fail_after(LIMIT):
        a = Source(itertools.count(), gaps=0.002)
        b = Source(itertools.count(1000), gaps=0.002)
        async with (
            merge(map(a, doubled), filter(b, lambda x: x % 2 == 0)) as merged,
            batch(merged, 4, 0.5) as batches,
            aclosing(take(batches, 2)) as first_two,
        ):
            got = await collect(first_two)
        assert [len(b) for b in got] == [4, 4]
        items = [x for b in got for x in b]
        evens_from_a = [x for x in items if x < 1000]
        evens_from_b = [x for x in items if x >= 1000]
        assert all(x % 2 == 0 for x in items)
        assert evens_from_a == sorted(evens_from_a)
        assert evens_from_b == sorted(evens_from_b)
        assert a.closed
        assert b.closed


async def test_full_pipeline_delivers_every_item_once() -> None:
    with anyio.fail_after(LIMIT):
        a = Source(range(5), gaps=0.002)
        b = Source(range(10, 15), gaps=0.003)
        async with (
            merge(amap(a, tripled), b) as merged,
            heartbeat(merged, 0.5, lambda: -1) as beating,
            batch(beating, 100, 0.5) as batches,
        ):
            got = await collect(batches)
        assert len(got) == 1
        assert sorted(got[0]) == [0, 3, 6, 9, 10, 11, 12, 12, 13, 14]


async def test_invalid_arguments_fail_when_the_stage_is_built() -> None:
    source = Source(range(3))
    with pytest.raises(ValueError, match="n must not be negative"):
        take(source, -1)
    with pytest.raises(ValueError, match="size"):
        batch(source, 0, 1.0)
    with pytest.raises(ValueError, match="max_wait"):
        batch(source, 1, 0.0)
    with pytest.raises(ValueError, match="interval"):
        throttle(source, -1.0)
    with pytest.raises(ValueError, match="interval"):
        heartbeat(source, 0.0, lambda: None)
    assert not source.started


async def test_batch_leaves_at_once_unless_hold_says_wait() -> None:
    holding = False
    send, receive = anyio.create_memory_object_stream[int](10)
    async with batch(receive, 5, 10.0, hold=lambda: holding) as batches:
        await send.send(1)
        with anyio.fail_after(1):
            assert await batches.receive() == [1]
        holding = True
        await send.send(2)
        with anyio.move_on_after(0.2) as waited:
            await batches.receive()
        assert waited.cancelled_caught
        holding = False
        await send.send(3)
        with anyio.fail_after(1):
            assert await batches.receive() == [2, 3]
        send.close()
