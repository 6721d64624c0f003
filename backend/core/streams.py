"""Stream operators over async iterables that stay correct under cancellation.

There are two kinds of stage, because a cancel scope or task group must never stay
open across a `yield` (it would catch cancellations meant for another task):

* Pure stages (`map`, `amap`, `filter`, `take`) are plain async generators doing
  single-task work and opening no cancel scope. Each one owns its upstream and closes it
  on exit (`closing_iter`), so closing the outermost stage closes the whole chain.
  Consume them under `contextlib.aclosing` so that this happens at once, in your task,
  not later in a garbage-collector finalizer. That is also the answer to flake8-async
  ASYNC119, which flags their `yield` inside `async with closing_iter(...)`. A stage
  that is closed before its first step never opened its upstream and leaves it alone.

* Time-based stages (`batch`, `merge`, `throttle`, `heartbeat`) need timers or several
  tasks. The design chosen for them: each is an `@asynccontextmanager` (the one place
  where a `yield` inside a task group is sound) that yields an `ObjectReceiveStream`.
  Producer tasks in that task group read the upstream and send into a memory stream
  with no buffer, so a slow consumer holds the upstream back. `throttle` instead keeps
  one slot that newer items overwrite. The consumer's own task enters and leaves the
  task group, so a cancellation or error can only reach that task. Leaving the block
  cancels the producers and returns only after the upstream is closed. An error leaves
  with its original type instead of a one-member ExceptionGroup. Timeouts only wrap
  `receive()` on a memory stream (which loses no item when cancelled), never an
  upstream's `__anext__`. `task_backed` is the building block for more such stages.

Usage::

    async with merge(a, b) as merged, batch(merged, 10, 0.5) as batches:
        async with aclosing(map(batches, len)) as sizes:
            async for size in sizes:
                ...

Do not `yield` from an async generator inside one of these blocks: that would put the
producers' task group across a `yield` after all.
"""

from __future__ import annotations

import functools
import math
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
)
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Concatenate, NoReturn, ParamSpec, Protocol, TypeVar, runtime_checkable

import anyio
import anyio.lowlevel
from anyio.abc import ObjectReceiveStream
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

__all__ = [
    "CLEANUP_TIMEOUT",
    "amap",
    "batch",
    "closing_iter",
    "collapse_single",
    "filter",
    "heartbeat",
    "map",
    "merge",
    "take",
    "task_backed",
    "throttle",
]

T = TypeVar("T")
U = TypeVar("U")
B = TypeVar("B")
P = ParamSpec("P")

CLEANUP_TIMEOUT = 1.0
"""Seconds an upstream gets to run its own async cleanup once a stage closes it."""


@runtime_checkable
class _Closable(Protocol):
    """Anything with an async `aclose()`: async generators, anyio streams."""

    async def aclose(self) -> object: ...


class _ClosingIter(AbstractAsyncContextManager[AsyncIterator[T]]):
    """Hands out the iterator and closes it on exit, shielded, so cleanup survives a cancel."""

    def __init__(self, iterator: AsyncIterator[T]) -> None:
        self._iterator = iterator

    async def __aenter__(self) -> AsyncIterator[T]:
        return self._iterator

    async def __aexit__(self, *exc_info: object) -> None:
        if isinstance(self._iterator, _Closable):
            with anyio.move_on_after(CLEANUP_TIMEOUT, shield=True):
                await self._iterator.aclose()


def closing_iter(source: AsyncIterable[T]) -> AbstractAsyncContextManager[AsyncIterator[T]]:
    """Iterate `source` and close its iterator on exit when it can be closed.

    Unlike `contextlib.aclosing`, this accepts any async iterable, and it shields the
    close so that an upstream's `finally` can still await while we are being cancelled.
    """
    return _ClosingIter(aiter(source))


def collapse_single(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """Return the only exception inside nested one-member groups, else the group itself.

    Task groups wrap even a lone error; callers should see the error they know.
    """
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _raise_collapsed(group: BaseExceptionGroup[BaseException]) -> NoReturn:
    """Re-raise the group's single exception, keeping the context it had when first raised."""
    single = collapse_single(group)
    if single is group:
        raise group
    context = single.__context__
    try:
        raise single
    finally:
        # Raising here links the group as context; the group only restates this error.
        single.__context__ = context
        del single


async def _deliver(send: MemoryObjectSendStream[T], item: T) -> bool:
    """Send one item; False once every receiver has gone, so the caller can stop."""
    try:
        await send.send(item)
    except anyio.BrokenResourceError:
        return False
    return True


@asynccontextmanager
async def _running(*tasks: Callable[[], Coroutine[Any, Any, None]]) -> AsyncIterator[None]:
    """Run `tasks` while the block runs; leaving it cancels them and waits for them.

    The consumer's task enters and leaves the task group, so errors and cancellations
    only ever reach that task. Errors leave with their own type (`collapse_single`).
    """
    try:
        async with anyio.create_task_group() as tg:
            for task in tasks:
                tg.start_soon(task)
            yield
            tg.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        _raise_collapsed(group)


@asynccontextmanager
async def task_backed(
    produce: Callable[Concatenate[MemoryObjectSendStream[T], P], Awaitable[None]],
    /,
    *args: P.args,
    **kwargs: P.kwargs,
) -> AsyncIterator[MemoryObjectReceiveStream[T]]:
    """Run `produce(send, *args, **kwargs)` in a task; the block receives what it sends.

    The stream has no buffer, so the producer waits for the consumer. When `produce`
    returns, the send side closes and the consumer's iteration ends. Leaving the block
    closes the receive side and cancels the producer, then waits for it to finish.
    """
    send, receive = anyio.create_memory_object_stream[T](0)

    async def pump() -> None:
        with send:
            await produce(send, *args, **kwargs)

    async with _running(pump):
        with receive:
            yield receive


async def _forward(send: MemoryObjectSendStream[T], source: AsyncIterable[T]) -> None:
    """Copy every upstream item to `send`; stop reading once nobody receives."""
    with send:
        async with closing_iter(source) as items:
            async for item in items:
                if not await _deliver(send, item):
                    return


async def map(source: AsyncIterable[T], fn: Callable[[T], U]) -> AsyncGenerator[U, None]:
    """Apply a plain function to every item."""
    async with closing_iter(source) as items:
        async for item in items:
            yield fn(item)


async def amap(
    source: AsyncIterable[T], fn: Callable[[T], Awaitable[U]]
) -> AsyncGenerator[U, None]:
    """Apply an async function to every item, one at a time, keeping their order."""
    async with closing_iter(source) as items:
        async for item in items:
            yield await fn(item)


async def filter(
    source: AsyncIterable[T], predicate: Callable[[T], bool]
) -> AsyncGenerator[T, None]:
    """Keep the items for which `predicate` is true."""
    async with closing_iter(source) as items:
        async for item in items:
            if predicate(item):
                yield item


def take(source: AsyncIterable[T], n: int) -> AsyncGenerator[T, None]:
    """The first `n` items; the upstream is closed without reading an (n+1)th item."""
    if n < 0:
        raise ValueError(f"n must not be negative, got {n}")
    return _take(source, n)


async def _take(source: AsyncIterable[T], n: int) -> AsyncGenerator[T, None]:
    async with closing_iter(source) as items:
        if n == 0:
            return
        count = 0
        async for item in items:
            yield item
            count += 1
            if count == n:
                return


def batch(
    source: AsyncIterable[T],
    size: int,
    max_wait: float,
    *,
    hold: Callable[[], bool] | None = None,
) -> AbstractAsyncContextManager[ObjectReceiveStream[list[T]]]:
    """Lists of up to `size` items.

    A batch is sent when full, when `max_wait` seconds have passed since its first item
    arrived, or when the source ends. It never sends an empty list. With `hold`, a batch
    waits for more only while `hold()` is true; otherwise it leaves at once with whatever
    is ready (for instance: hold only while a downstream commit is in flight, so a lone
    item pays no wait).
    """
    if size < 1:
        raise ValueError(f"size must be at least 1, got {size}")
    if max_wait <= 0:
        raise ValueError(f"max_wait must be positive, got {max_wait}")
    return task_backed(_batch_into, source, size, max_wait, hold)


def _take_ready(items: MemoryObjectReceiveStream[T], pending: list[T], size: int) -> None:
    """Move what is already waiting in `items` into `pending`, up to `size` in all."""
    while len(pending) < size:
        try:
            pending.append(items.receive_nowait())
        except (anyio.WouldBlock, anyio.EndOfStream):
            return


async def _batch_into(
    out: MemoryObjectSendStream[list[T]],
    source: AsyncIterable[T],
    size: int,
    max_wait: float,
    hold: Callable[[], bool] | None,
) -> None:
    async with task_backed(_forward, source) as items:
        pending: list[T] = []
        deadline = math.inf
        while True:
            with anyio.CancelScope(deadline=deadline):
                try:
                    item = await items.receive()
                except anyio.EndOfStream:
                    break
                if not pending:
                    deadline = anyio.current_time() + max_wait
                pending.append(item)
                _take_ready(items, pending, size)
                if len(pending) < size and (hold is None or hold()):
                    continue
            # Reached when the batch is full, its deadline cancelled the receive, or
            # `hold` let it go.
            if not await _deliver(out, pending):
                return
            pending, deadline = [], math.inf
        if pending:
            await _deliver(out, pending)


def merge(*sources: AsyncIterable[T]) -> AbstractAsyncContextManager[ObjectReceiveStream[T]]:
    """Items of all sources in arrival order; ends when every source has ended.

    The first error in any source cancels the others and leaves the block as raised.
    """
    return task_backed(_merge_into, sources)


async def _merge_into(
    out: MemoryObjectSendStream[T], sources: tuple[AsyncIterable[T], ...]
) -> None:
    async with anyio.create_task_group() as tg:
        for source in sources:
            tg.start_soon(_forward, out.clone(), source)


def throttle(
    source: AsyncIterable[T], interval: float
) -> AbstractAsyncContextManager[ObjectReceiveStream[T]]:
    """At most one item per `interval` seconds, coalescing to the latest.

    The first item goes out at once. Items that arrive before the consumer may take the
    next one replace each other, so it always gets the newest, no item is handed out
    twice, and the last item is always handed out. A producer task reads the upstream
    continuously into a one-slot buffer and never waits for a slow consumer; the interval
    counts from the moment the consumer took the previous item.
    """
    if interval < 0:
        raise ValueError(f"interval must not be negative, got {interval}")
    return _throttled(source, interval)


@asynccontextmanager
async def _throttled(source: AsyncIterable[T], interval: float) -> AsyncIterator[_Throttled[T]]:
    send, latest = anyio.create_memory_object_stream[T](1)
    async with _running(functools.partial(_forward_latest, send, latest, source)):
        with latest:
            yield _Throttled(latest, interval)


class _Throttled(ObjectReceiveStream[T]):
    """Receives from the one-slot buffer no sooner than `interval` after the last receive.

    The wait runs in the consumer's task, so no item is held back while it is stale.
    """

    def __init__(self, latest: MemoryObjectReceiveStream[T], interval: float) -> None:
        self._latest = latest
        self._interval = interval
        self._next_at = -math.inf

    async def receive(self) -> T:
        await anyio.sleep_until(self._next_at)
        item = await self._latest.receive()
        self._next_at = anyio.current_time() + self._interval
        return item

    async def aclose(self) -> None:
        self._latest.close()


async def _forward_latest(
    send: MemoryObjectSendStream[T], latest: MemoryObjectReceiveStream[T], source: AsyncIterable[T]
) -> None:
    """Keep the newest upstream item in the one-slot buffer, dropping an unread older one."""
    with send:
        async with closing_iter(source) as items:
            async for item in items:
                try:
                    send.send_nowait(item)
                except anyio.WouldBlock:
                    latest.receive_nowait()
                    send.send_nowait(item)
                except anyio.BrokenResourceError:
                    return
                # Never blocking here, so yield to the scheduler: an upstream that does
                # not await either would otherwise starve every other task.
                await anyio.lowlevel.checkpoint()


def heartbeat(
    source: AsyncIterable[T], interval: float, make_beat: Callable[[], B]
) -> AbstractAsyncContextManager[ObjectReceiveStream[T | B]]:
    """Pass items through, adding `make_beat()` after every `interval` seconds without one.

    The idle time counts from the last item or beat handed to the consumer, which is the
    silence a keep-alive has to bound.
    """
    if interval <= 0:
        raise ValueError(f"interval must be positive, got {interval}")
    return task_backed(_heartbeat_into, source, interval, make_beat)


async def _heartbeat_into(
    out: MemoryObjectSendStream[T | B],
    source: AsyncIterable[T],
    interval: float,
    make_beat: Callable[[], B],
) -> None:
    async with task_backed(_forward, source) as items:
        while True:
            with anyio.move_on_after(interval) as idle:
                try:
                    item = await items.receive()
                except anyio.EndOfStream:
                    return
            if not await _deliver(out, make_beat() if idle.cancelled_caught else item):
                return
