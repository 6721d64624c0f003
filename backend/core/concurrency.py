"""Small structured-concurrency helpers shared by the layers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

import anyio

from backend.core.streams import collapse_single


@contextmanager
def unwrap_single_error() -> Iterator[None]:
    """Re-raise a lone exception out of a task group's ExceptionGroup as itself.

    Callers then catch the types they know (CursorExpired, AssertionError in a test) instead
    of an ExceptionGroup; groups of several real failures pass through unchanged.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        inner = collapse_single(group)
        if inner is group:
            raise
        raise inner from None


async def first_to_finish(*tasks: Callable[[], Awaitable[None]]) -> None:
    """Run tasks together; when one returns, cancel the rest (a custom supervisor)."""
    async with anyio.create_task_group() as tg:
        for task in tasks:

            async def run(task: Callable[[], Awaitable[None]] = task) -> None:
                await task()
                tg.cancel_scope.cancel()

            tg.start_soon(run)
